"""Course pages, the launch endpoint, joining a cohort, and teaching one."""

from django.urls import path

from . import dashboard, enrolment, teaching, views

app_name = "course"
urlpatterns = [
    path("", views.course_index, name="index"),
    path("lessons/<slug:slug>/", views.lesson_page, name="lesson"),
    path("api/lessons/<slug:slug>/lab", views.launch_lab, name="launch"),
    path("progress/", views.progress_page, name="progress"),
    path("join/", enrolment.join, name="join"),
    path("join/<str:code>/", enrolment.join_invite, name="join_invite"),
    path("teaching/", teaching.teaching_index, name="teaching"),
    path("teaching/<int:cohort_id>/", teaching.cohort_page, name="cohort"),
    path("teaching/<int:cohort_id>/invites/", teaching.create_invite, name="create_invite"),
    path(
        "teaching/<int:cohort_id>/invites/<int:invite_id>/withdraw/", teaching.withdraw_invite, name="withdraw_invite"
    ),
    path("teaching/<int:cohort_id>/schedule/", teaching.edit_schedule, name="edit_schedule"),
    path("teaching/<int:cohort_id>/quotas/", teaching.edit_quotas, name="edit_quotas"),
    path("teaching/<int:cohort_id>/dashboard/", dashboard.dashboard, name="dashboard"),
    path("teaching/<int:cohort_id>/progress.csv", dashboard.progress_csv, name="progress_csv"),
    path("teaching/<int:cohort_id>/labs/<str:lab_id>/", dashboard.watch_lab, name="watch_lab"),
    path("teaching/<int:cohort_id>/labs/<str:lab_id>/stop", dashboard.stop_lab, name="stop_lab"),
]
