"""Lab API routes (mounted under /api/)."""

from django.urls import path

from . import views

app_name = "sandbox"
urlpatterns = [
    path("labs/<str:lab_id>/", views.lab_status, name="status"),
    path("labs/<str:lab_id>/stop", views.stop_lab, name="stop"),
    path("labs/<str:lab_id>/extend", views.extend_lab, name="extend"),
    path("labs/<str:lab_id>/break", views.break_lab, name="break"),
    path("labs/<str:lab_id>/faults/<slug:key>", views.inject_fault, name="fault"),
    path("labs/<str:lab_id>/nodes/<slug:node>/restart", views.restart_node, name="restart"),
    path("labs/<str:lab_id>/reset", views.reset_lab, name="reset"),
    path("labs/<str:lab_id>/skip", views.skip_lab, name="skip"),
    path("labs/<str:lab_id>/hints/next", views.next_hint, name="hint"),
    path("labs/<str:lab_id>/active", views.still_here, name="active"),
    path("labs/<str:lab_id>/objectives/<slug:key>/answer", views.answer_question, name="answer"),
]
