"""Staff manage the course in the Django admin: cohorts with their learners, instructors, invites,
schedule and quotas; the loaded content (read-only: it comes from the files)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from sandbox import lifecycle
from sandbox.models import Lab

from . import cohorts
from .models import Cohort, Course, Enrolment, Invite, LabRecord, Lesson, LessonUnlock, Module, VerifiedEmail


class EnrolmentInline(admin.TabularInline):
    model = Enrolment
    extra = 0
    autocomplete_fields = ["learner"]
    readonly_fields = ["invite", "joined_at"]


class InviteInline(admin.TabularInline):
    model = Invite
    extra = 0
    fields = ["code", "expires_at", "max_uses", "uses", "allowed_domains", "is_active"]
    readonly_fields = ["code", "uses"]

    def has_add_permission(self, request: HttpRequest, obj: Cohort | None = None) -> bool:
        return False  # codes are made by the "Create an invite" action, never typed in


class LessonUnlockInline(admin.TabularInline):
    model = LessonUnlock
    extra = 1


@admin.register(Cohort)
class CohortAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at", "learner_count", "max_labs_per_learner", "max_labs_running"]
    search_fields = ["name", "instructors__username", "enrolments__learner__username"]
    filter_horizontal = ["instructors"]
    readonly_fields = ["created_by", "created_at"]
    inlines = [EnrolmentInline, InviteInline, LessonUnlockInline]
    actions = ["create_invite", "stop_running_labs"]

    @admin.display(description="learners")
    def learner_count(self, cohort: Cohort) -> int:
        return cohort.enrolments.count()

    def save_model(self, request: HttpRequest, obj: Cohort, form: object, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.action(description="Create an invite (no expiry, no use limit) for each selected cohort")
    def create_invite(self, request: HttpRequest, queryset: QuerySet[Cohort]) -> None:
        for cohort in queryset:
            invite = cohorts.create_invite(cohort, request.user)
            self.message_user(request, f"{cohort}: invite code {invite.code}", messages.SUCCESS)

    @admin.action(description="Stop every running lab of the selected cohorts' learners")
    def stop_running_labs(self, request: HttpRequest, queryset: QuerySet[Cohort]) -> None:
        labs = Lab.objects.filter(state__in=Lab.LIVE_STATES, owner__enrolments__cohort__in=queryset).distinct()
        stopping = 0
        for lab in labs:
            try:
                lifecycle.request_stop(lab, reason=f"Stopped by staff ({request.user.get_username()}).")
                stopping += 1
            except lifecycle.LabError:
                pass  # it ended meanwhile
        self.message_user(request, f"Stopping {stopping} lab(s).", messages.SUCCESS)


@admin.register(Enrolment)
class EnrolmentAdmin(admin.ModelAdmin):
    list_display = ["learner", "cohort", "joined_at", "invite"]
    list_filter = ["cohort"]
    search_fields = ["learner__username", "learner__email", "cohort__name"]
    autocomplete_fields = ["learner"]


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    list_display = ["code", "cohort", "uses", "max_uses", "expires_at", "is_active"]
    list_filter = ["cohort", "is_active"]
    readonly_fields = ["code", "cohort", "uses", "created_by", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # codes are made by the cohort's "Create an invite" action, never typed in


class ContentAdmin(admin.ModelAdmin):
    """Content comes from the files (`manage.py load_content`): shown, never edited here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Course)
class CourseAdmin(ContentAdmin):
    list_display = ["title", "loaded_at"]


@admin.register(Module)
class ModuleAdmin(ContentAdmin):
    list_display = ["title", "slug", "position"]


@admin.register(Lesson)
class LessonAdmin(ContentAdmin):
    list_display = ["title", "slug", "module", "order", "lab_slug", "updated_at"]
    list_filter = ["module"]


@admin.register(LabRecord)
class LabRecordAdmin(ContentAdmin):
    list_display = ["slug", "title", "updated_at"]


@admin.register(VerifiedEmail)
class VerifiedEmailAdmin(admin.ModelAdmin):
    """Confirmed addresses (domain-restricted invites need one). Staff may confirm one by hand."""

    list_display = ["user", "email", "verified_at"]
    search_fields = ["user__username", "email"]
    autocomplete_fields = ["user"]
