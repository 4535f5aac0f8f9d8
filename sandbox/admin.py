"""Staff see and stop labs in the Django admin."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import lifecycle
from .models import Lab, Node, ObjectiveResult


class NodeInline(admin.TabularInline):
    model = Node
    extra = 0
    readonly_fields = ["name", "group", "role", "state", "ip", "updated_at"]


class ObjectiveInline(admin.TabularInline):
    model = ObjectiveResult
    extra = 0
    readonly_fields = ["key", "status", "reason", "first_met_at", "updated_at"]


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    list_display = ["short_id", "owner", "lab_slug", "lesson_slug", "state", "created_at", "expires_at"]
    list_filter = ["state", "lab_slug"]
    search_fields = ["owner__username", "lab_slug", "lesson_slug"]
    readonly_fields = ["id", "state", "reason", "subnet", "steps", "created_at", "ready_at", "broken_at", "stopped_at"]
    inlines = [NodeInline, ObjectiveInline]
    actions = ["stop_labs"]

    @admin.action(description="Stop selected labs")
    def stop_labs(self, request: HttpRequest, queryset: QuerySet[Lab]) -> None:
        stopped = 0
        for lab in queryset:
            if lab.is_live:
                lifecycle.request_stop(lab, reason=f"Stopped by staff ({request.user.get_username()}).")
                stopped += 1
        self.message_user(request, f"Stopping {stopped} lab(s).", messages.SUCCESS)
