"""Cohorts: enrolment by invite, the schedule of lesson unlocks, lab quotas, and who may watch
whose labs. Plain functions over the models; views and the admin call these."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.formats import date_format

from sandbox import lifecycle
from sandbox.access import INSTRUCTORS_GROUP, is_instructor
from sandbox.models import Lab

from . import verification
from .models import Cohort, Course, Enrolment, Invite, LessonUnlock

INVITE_CODE_BYTES = 9  # 12 URL-safe characters: not guessable, short enough to read out
INVALID_CODE = "This invite code is not valid. Check it with your instructor."


class EnrolmentError(Exception):
    """An invite cannot be used; the message says why, for the person using it."""


class InviteNotFound(EnrolmentError):
    """No invite has this code, or it was withdrawn."""


class LessonLocked(Exception):
    """The lesson is not open yet to this learner; the message says when it opens."""


@dataclass(frozen=True)
class QuotaExceeded(Exception):
    """A launch over one of a cohort's quotas: which one, and when it frees (if it ever does)."""

    quota: str  # labs_per_learner, labs_running, lab_hours
    cohort: str
    message: str

    def __str__(self) -> str:
        return self.message


def _local(moment: datetime) -> str:
    """A moment as the site's clock shows it, with the zone's name (learners may be elsewhere)."""
    local = timezone.localtime(moment)
    return f"{date_format(local, 'DATETIME_FORMAT')} {local.tzname()}"


# -- invites and enrolment ------------------------------------------------------------------


def create_invite(
    cohort: Cohort,
    created_by: AbstractBaseUser | None = None,
    *,
    expires_at: datetime | None = None,
    max_uses: int | None = None,
    allowed_domains: list[str] | None = None,
) -> Invite:
    domains = sorted({domain.strip().lower().lstrip("@") for domain in allowed_domains or [] if domain.strip()})
    return Invite.objects.create(
        cohort=cohort,
        code=secrets.token_urlsafe(INVITE_CODE_BYTES),
        created_by=created_by,
        expires_at=expires_at,
        max_uses=max_uses,
        allowed_domains=domains,
    )


def find_invite(code: str) -> Invite:
    code = code.strip()
    invite = Invite.objects.select_related("cohort").filter(code=code).first() if code else None
    if invite is None or not invite.is_active:
        raise InviteNotFound(INVALID_CODE)
    return invite


def _email_domain(user: AbstractBaseUser) -> str:
    email = getattr(user, "email", "") or ""
    return email.rpartition("@")[2].lower() if "@" in email else ""


USED_UP = "This invite has been used as many times as it allows. Ask your instructor."


def check_invite(user: AbstractBaseUser, invite: Invite) -> None:
    """Raise EnrolmentError if `user` cannot use `invite` now: it expired, it is for other e-mail
    domains (or the user has not confirmed their address at one of them yet), or its uses are
    spent (as last read: `enrol_with_invite` takes the use for sure)."""
    if invite.expires_at is not None and invite.expires_at <= timezone.now():
        raise EnrolmentError(f"This invite expired on {_local(invite.expires_at)}. Ask your instructor for a new one.")
    if invite.allowed_domains and _email_domain(user) not in invite.allowed_domains:
        domains = ", ".join(f"@{domain}" for domain in invite.allowed_domains)
        raise EnrolmentError(f"This invite is for e-mail addresses at {domains}; your account's is not.")
    if invite.allowed_domains and not verification.is_verified(user):
        # Anyone can sign up with any address: only a followed link proves it is theirs.
        raise EnrolmentError(verification.VERIFY_FIRST)
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        raise EnrolmentError(USED_UP)


def invite_state(invite: Invite, now: datetime | None = None) -> str:
    """How the invite stands, as its instructor sees it: active, withdrawn, expired or used up."""
    if not invite.is_active:
        return "withdrawn"
    if invite.expires_at is not None and invite.expires_at <= (now or timezone.now()):
        return "expired"
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        return "used up"
    return "active"


def enrol_with_invite(user: AbstractBaseUser, code: str) -> Enrolment:
    """Enrol `user` in the invite's cohort. Already enrolled: the enrolment, and no use is spent.

    1. The invite must exist, be active, not have expired, and allow the user's e-mail domain
       (`check_invite`).
    2. A use is taken with a compare-and-set on `uses`, so two people racing for the last use
       cannot both get it.
    3. The enrolment is created in the same transaction: a refused one gives the use back.
    """
    invite = find_invite(code)
    existing = Enrolment.objects.filter(cohort=invite.cohort, learner=user).first()
    if existing is not None:
        return existing
    check_invite(user, invite)
    with transaction.atomic():
        unused = Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses"))
        if not Invite.objects.filter(unused, pk=invite.pk, is_active=True).update(uses=F("uses") + 1):
            raise EnrolmentError(USED_UP)
        try:
            with transaction.atomic():
                return Enrolment.objects.create(cohort=invite.cohort, learner=user, invite=invite)
        except IntegrityError:
            # Enrolled meanwhile by a second request: keep that one, and give the use back.
            Invite.objects.filter(pk=invite.pk).update(uses=F("uses") - 1)
            return Enrolment.objects.get(cohort=invite.cohort, learner=user)


def cohorts_of(user: AbstractBaseUser) -> QuerySet[Cohort]:
    return Cohort.objects.filter(enrolments__learner=user)


def cohorts_taught_by(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Cohort]:
    """The cohorts a user may see the dashboard of: all for staff, their own for instructors."""
    if not user.is_authenticated:
        return Cohort.objects.none()
    if user.is_staff:
        return Cohort.objects.all()
    if is_instructor(user):
        return Cohort.objects.filter(instructors=user)
    return Cohort.objects.none()


def get_cohort_for_instructor(user: AbstractBaseUser | AnonymousUser, cohort_id: int) -> Cohort:
    """The cohort, if `user` teaches it (or is staff). Raises Http404 otherwise, never revealing
    that someone else's cohort exists."""
    cohort = cohorts_taught_by(user).filter(pk=cohort_id).first()
    if cohort is None:
        raise Http404("No such cohort")
    return cohort


def create_cohort(name: str, created_by: AbstractBaseUser) -> Cohort:
    """A new cohort of the course, taught by the person who creates it. Raises Course.DoesNotExist
    while no content is loaded."""
    course = Course.objects.order_by("pk").first()
    if course is None:
        raise Course.DoesNotExist("No course is loaded yet: run `manage.py load_content` first.")
    with transaction.atomic():
        cohort = Cohort.objects.create(name=name, course=course, created_by=created_by)
        cohort.instructors.add(created_by)
    return cohort


def withdraw_invite(invite: Invite) -> None:
    """Nobody can join with this invite any more; those who joined with it stay."""
    Invite.objects.filter(pk=invite.pk).update(is_active=False)


def may_watch(user: AbstractBaseUser | AnonymousUser, lab: Lab) -> bool:
    """Whether `user` may watch another person's lab (read-only): staff, or an instructor of a
    cohort the lab's owner had joined when the lab was launched. A lab belongs to its learner, not
    to a cohort: a learner in two cohorts is watched by the instructors of both."""
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    return (
        is_instructor(user)
        and Enrolment.objects.filter(
            cohort__instructors=user, learner_id=lab.owner_id, joined_at__lte=lab.created_at
        ).exists()
    )


# -- schedule ---------------------------------------------------------------------------------


def locked_lessons(user: AbstractBaseUser, now: datetime | None = None) -> dict[str, datetime]:
    """The lessons not open yet to `user`, each with when it opens.

    A lesson is locked only if every cohort of the learner schedules it for later: a cohort
    without a date for it leaves it open, and so does having no cohort. Instructors and staff
    see everything.
    """
    if user.is_staff or is_instructor(user):
        return {}
    return _locked_lessons_of([user.pk], now or timezone.now())[user.pk]


def locked_lessons_of(learner_ids: Collection[int], now: datetime | None = None) -> dict[int, dict[str, datetime]]:
    """`locked_lessons` for many learners at once, by learner id, in a fixed number of queries
    (for pages that show a whole cohort)."""
    now = now or timezone.now()
    exempt = set(
        get_user_model()
        .objects.filter(Q(is_staff=True) | Q(groups__name=INSTRUCTORS_GROUP), pk__in=learner_ids)
        .values_list("pk", flat=True)
    )
    locked = _locked_lessons_of([pk for pk in learner_ids if pk not in exempt], now)
    return {pk: locked.get(pk, {}) for pk in learner_ids}


def _locked_lessons_of(learner_ids: Collection[int], now: datetime) -> dict[int, dict[str, datetime]]:
    cohorts_by_learner: dict[int, set[int]] = {pk: set() for pk in learner_ids}
    for learner_id, cohort_id in Enrolment.objects.filter(learner_id__in=learner_ids).values_list(
        "learner_id", "cohort_id"
    ):
        cohorts_by_learner[learner_id].add(cohort_id)
    all_cohorts = set().union(*cohorts_by_learner.values())
    dates: dict[str, dict[int, datetime]] = {}
    for cohort_id, slug, moment in LessonUnlock.objects.filter(cohort_id__in=all_cohorts).values_list(
        "cohort_id", "lesson_slug", "unlocks_at"
    ):
        dates.setdefault(slug, {})[cohort_id] = moment
    locked: dict[int, dict[str, datetime]] = {}
    for learner_id, cohort_ids in cohorts_by_learner.items():
        locked[learner_id] = {}
        if not cohort_ids:
            continue
        for slug, by_cohort in dates.items():
            moments = [by_cohort.get(cohort_id) for cohort_id in cohort_ids]
            if all(moment is not None and moment > now for moment in moments):
                locked[learner_id][slug] = min(moment for moment in moments if moment is not None)
    return locked


def set_schedule(cohort: Cohort, unlocks: Mapping[str, datetime | None]) -> None:
    """Set when each named lesson opens to the cohort; None clears its date (open from the
    start). Lessons not named keep theirs."""
    with transaction.atomic():
        for slug, moment in unlocks.items():
            if moment is None:
                LessonUnlock.objects.filter(cohort=cohort, lesson_slug=slug).delete()
            else:
                LessonUnlock.objects.update_or_create(cohort=cohort, lesson_slug=slug, defaults={"unlocks_at": moment})


def opens_at(user: AbstractBaseUser, lesson_slug: str, now: datetime | None = None) -> datetime | None:
    """When a lesson opens to `user`; None if it is open now."""
    return locked_lessons(user, now).get(lesson_slug)


def require_open(user: AbstractBaseUser, lesson_slug: str) -> None:
    moment = opens_at(user, lesson_slug)
    if moment is not None:
        raise LessonLocked(f"This lesson opens on {_local(moment)}.")


# -- quotas -----------------------------------------------------------------------------------


def lab_hours(labs: QuerySet[Lab], now: datetime | None = None) -> Decimal:
    """Hours the labs ran: from ready to stopped (or now, for one still running), plus what each
    ran before its resets."""
    now = now or timezone.now()
    seconds = 0.0
    for ready_at, stopped_at, earlier in labs.values_list("ready_at", "stopped_at", "earlier_run_seconds"):
        seconds += earlier
        if ready_at is not None:
            seconds += max(0.0, ((stopped_at or now) - ready_at).total_seconds())
    return Decimal(str(round(seconds / 3600, 2)))


def _earliest_expiry(labs: QuerySet[Lab]) -> datetime | None:
    return labs.exclude(expires_at=None).order_by("expires_at").values_list("expires_at", flat=True).first()


def _when_yours_frees(mine: QuerySet[Lab]) -> str:
    """When a learner at their own limit gets a slot back: by stopping one, or as one expires."""
    expiry = _earliest_expiry(mine)
    return f" One frees when you stop a lab{f', or at {_local(expiry)} at the latest' if expiry else ''}."


def _when_one_frees(labs: QuerySet[Lab]) -> str:
    """When a shared limit (a cohort's, the installation's) gets a slot back, at the latest."""
    expiry = _earliest_expiry(labs)
    return f" The next frees at {_local(expiry)} at the latest." if expiry else " Try again in a few minutes."


def check_launch_quotas(user: AbstractBaseUser, now: datetime | None = None) -> None:
    """Refuse a new lab over any quota of any of the learner's cohorts (QuotaExceeded says which,
    and when it frees). Call it in the transaction that creates the lab, after `lock_cohorts`."""
    now = now or timezone.now()
    running = Lab.objects.filter(state__in=Lab.LIVE_STATES)
    site_cap = settings.MAX_LABS_RUNNING
    if site_cap is not None and running.count() >= site_cap:
        frees = _when_one_frees(running)
        raise QuotaExceeded(
            "site_labs_running", "", f"Stacklab is running as many labs as it can at once ({site_cap}).{frees}"
        )
    enrolments = list(Enrolment.objects.filter(learner=user).select_related("cohort"))
    mine = running.filter(owner=user)
    alone_cap = settings.MAX_LABS_PER_LEARNER
    if not enrolments and alone_cap is not None and mine.count() >= alone_cap:
        # A learner in no cohort (open sign-up) gets the installation's own limit.
        frees = _when_yours_frees(mine)
        raise QuotaExceeded(
            "labs_per_learner",
            "",
            f"You already have {mine.count()} lab(s) running, the most a learner outside a cohort may have"
            f" at once ({alone_cap}).{frees}",
        )
    for enrolment in enrolments:
        cohort = enrolment.cohort
        if cohort.max_labs_per_learner == 0:
            raise QuotaExceeded(
                "labs_per_learner", cohort.name, f"{cohort.name} allows no labs at the moment: ask your instructor."
            )
        if cohort.max_labs_per_learner is not None and mine.count() >= cohort.max_labs_per_learner:
            frees = _when_yours_frees(mine)
            raise QuotaExceeded(
                "labs_per_learner",
                cohort.name,
                f"You already have {mine.count()} lab(s) running, the most {cohort.name} allows at once"
                f" ({cohort.max_labs_per_learner}).{frees}",
            )
        members = running.filter(owner__enrolments__cohort=cohort)
        if cohort.max_labs_running is not None and members.count() >= cohort.max_labs_running:
            frees = _when_one_frees(members)
            raise QuotaExceeded(
                "labs_running",
                cohort.name,
                f"{cohort.name} already has {members.count()} labs running, as many as it allows at once"
                f" ({cohort.max_labs_running}).{frees}",
            )
        if cohort.lab_hours_per_learner is not None:
            used = hours_used(enrolment, now)
            if used >= cohort.lab_hours_per_learner:
                raise QuotaExceeded(
                    "lab_hours",
                    cohort.name,
                    f"You have used {used:.1f} of your {cohort.lab_hours_per_learner:.1f} lab hours in {cohort.name}."
                    " They do not renew: ask your instructor for more.",
                )


def stop_labs_over_hours(now: datetime | None = None) -> int:
    """Stop the running labs of learners who have used up a cohort's lab hours (a launch checks
    the hours, but a running lab can be extended past them). Returns how many were stopped."""
    now = now or timezone.now()
    stopped = 0
    live = Lab.objects.filter(state__in=Lab.LIVE_STATES)
    enrolments = (
        Enrolment.objects.filter(cohort__lab_hours_per_learner__isnull=False, learner__labs__in=live)
        .select_related("cohort")
        .distinct()
    )
    for enrolment in enrolments:
        quota = enrolment.cohort.lab_hours_per_learner
        assert quota is not None
        if hours_used(enrolment, now) < quota:
            continue
        reason = f"Your {quota:.1f} lab hours in {enrolment.cohort.name} are used up: ask your instructor for more."
        for lab in live.filter(owner_id=enrolment.learner_id):
            try:
                lifecycle.request_stop(lab, reason=reason)
                stopped += 1
            except lifecycle.LabError:
                pass  # it ended meanwhile
    return stopped


def lock_cohorts(user: AbstractBaseUser) -> None:
    """Serialise launches of the learner's cohorts until the transaction ends (a row lock on
    PostgreSQL; SQLite's IMMEDIATE transactions already serialise every writer)."""
    list(Cohort.objects.select_for_update().filter(enrolments__learner=user).values_list("pk", flat=True))


def hours_used(enrolment: Enrolment, now: datetime | None = None) -> Decimal:
    """Lab hours the learner used in the cohort: their labs launched since they joined."""
    return lab_hours(Lab.objects.filter(owner_id=enrolment.learner_id, created_at__gte=enrolment.joined_at), now)


@dataclass(frozen=True)
class LabAllowance:
    """One cohort of a learner, with its quotas (on `cohort`) and the lab hours used in it."""

    cohort: Cohort
    joined_at: datetime
    hours_used: Decimal

    @property
    def hours_left(self) -> Decimal | None:
        """None: the cohort sets no limit."""
        if self.cohort.lab_hours_per_learner is None:
            return None
        return max(Decimal("0"), self.cohort.lab_hours_per_learner - self.hours_used)


def lab_allowances(user: AbstractBaseUser, now: datetime | None = None) -> list[LabAllowance]:
    """The learner's cohorts, in the order they joined, each with the hours used and left."""
    now = now or timezone.now()
    return [
        LabAllowance(cohort=enrolment.cohort, joined_at=enrolment.joined_at, hours_used=hours_used(enrolment, now))
        for enrolment in Enrolment.objects.filter(learner=user).select_related("cohort")
    ]


def time_in_labs(user: AbstractBaseUser) -> timedelta:
    return timedelta(hours=float(lab_hours(Lab.objects.filter(owner=user))))
