"""Learning by teaching (Hosseini, Xie et al.): a three-level method.

Levels (edges relearn → teacher, relearn → student, teacher → student):

    teacher:  W_T*(H)     = argmin_{W_T}  CE(t(x ⊙ σ(H); W_T), y)                labelled
    student:  W_S*(W_T,H) = argmin_{W_S}  KL(softmax(t(x ⊙ σ(H); W_T)/τ) ‖ s(x; W_S))  unlabelled
    relearn:  min_H  CE(s(x; W_S*), y) + λ · CE(t(x ⊙ σ(H); W_T*), y)            validation

``H`` are the teacher's per-input gates (its "architecture"): the teacher re-learns them
from how well the student it taught does on validation data.

``levels.py`` holds the problems and ``build``, which wires them into an engine's
levels.
"""

from .levels import Gates, Relearn, Student, Teacher, build, mlp

__all__ = ["Gates", "Relearn", "Student", "Teacher", "build", "mlp"]
