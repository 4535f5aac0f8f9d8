"""Lab state in the database: the lab row and its state machine, its nodes, objective results."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Lab(models.Model):
    class State(models.TextChoices):
        REQUESTED = "requested"
        PROVISIONING = "provisioning"
        READY = "ready"
        STOPPING = "stopping"
        STOPPED = "stopped"
        FAILED = "failed"

    # A live lab holds (or is about to hold) engine objects; at most one per learner per lesson.
    LIVE_STATES = (State.REQUESTED, State.PROVISIONING, State.READY)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="labs")
    lab_slug = models.CharField(max_length=64)
    lesson_slug = models.CharField(max_length=128)
    state = models.CharField(max_length=16, choices=State.choices, default=State.REQUESTED)
    reason = models.TextField(blank=True, help_text="Why the lab failed, written for the learner.")
    subnet = models.CharField(max_length=32, blank=True)
    steps = models.JSONField(default=list, help_text="Provisioning steps so far, for catch-up.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    broken_at = models.DateTimeField(null=True, blank=True)
    skipped_at = models.DateTimeField(
        null=True, blank=True, help_text="When the learner had the solution run for them (Skip)."
    )
    hints_shown = models.PositiveSmallIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True)
    earlier_run_seconds = models.FloatField(
        default=0, help_text="Time it ran before its last reset: with ready_at..stopped_at, its whole running time."
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    last_active_at = models.DateTimeField(
        null=True, blank=True, help_text="The learner's last action, keystroke or 'still here'."
    )
    # A provisioning run holds the lab until this time and renews it every few seconds while it
    # works; a lease that runs out means its worker died, and the provision sweep recovers the lab.
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Until when the provisioning run holding the lab vouches for it."
    )
    provision_requeues = models.PositiveSmallIntegerField(
        default=0, help_text="Times the provision sweep queued a lost provision task again."
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "lesson_slug"],
                condition=models.Q(state__in=["requested", "provisioning", "ready"]),
                name="one_live_lab_per_lesson",
            )
        ]

    def __str__(self) -> str:
        return f"lab {self.short_id} ({self.lab_slug}, {self.state})"

    @property
    def short_id(self) -> str:
        """The id as engine object names carry it."""
        return self.id.hex[:12]

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES


class Node(models.Model):
    """One container of a lab, as the watcher last saw it."""

    class State(models.TextChoices):
        PENDING = "pending"
        STARTING = "starting"
        HEALTHY = "healthy"
        UNHEALTHY = "unhealthy"
        DOWN = "down"
        PAUSED = "paused"

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="nodes")
    name = models.CharField(max_length=40)
    group = models.CharField(max_length=40)
    role = models.CharField(max_length=16)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    ip = models.CharField(max_length=45, blank=True)
    container = models.CharField(max_length=100, blank=True, help_text="The container's name on the engine.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["lab", "name"], name="one_node_per_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"


class LabEvent(models.Model):
    """One line of the lab's timeline: what happened, when (node died, fault injected, ...)."""

    class Kind(models.TextChoices):
        LAB = "lab"
        NODE = "node"
        FAULT = "fault"
        OBJECTIVE = "objective"
        CONTROL = "control"
        HINT = "hint"

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    message = models.CharField(max_length=300)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.kind}: {self.message}"


class ObjectiveResult(models.Model):
    """The live result of one objective in one lab; `first_met_at` is the learner's progress."""

    class Status(models.TextChoices):
        PENDING = "pending"
        FAILING = "failing"
        MET = "met"

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="objective_results")
    key = models.CharField(max_length=40)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.CharField(max_length=300, blank=True)
    first_met_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["lab", "key"], name="one_result_per_key")]

    def __str__(self) -> str:
        return f"{self.key}: {self.status}"
