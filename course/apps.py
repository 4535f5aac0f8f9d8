from django.apps import AppConfig


class CourseConfig(AppConfig):
    name = "course"
    verbose_name = "Course"
    default_auto_field = "django.db.models.BigAutoField"
