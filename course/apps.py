from django.apps import AppConfig


class CourseConfig(AppConfig):
    name = "course"
    verbose_name = "Course"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from sandbox.access import set_watch_policy

        from . import cohorts, receivers

        # Instructors watch the labs of their own cohorts' learners, not everyone's.
        set_watch_policy(cohorts.may_watch)
        # Their dashboards follow those labs live: the runtime's signals, relayed to cohort groups.
        receivers.connect()
