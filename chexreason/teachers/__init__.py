"""Teachers write the reasoning of SFT traces: `TemplateTeacher` offline, `ApiTeacher` via any
OpenAI-compatible endpoint (see their modules)."""

from chexreason.teachers.base import Teacher, TeacherCase
from chexreason.teachers.template import TemplateTeacher

__all__ = ["Teacher", "TeacherCase", "TemplateTeacher"]
