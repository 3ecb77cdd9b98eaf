"""OpenAI's graders on local models: one implementation for the CLI, evaluation, training and the service.

``parse_grader(json) -> Grader`` checks a grader whole (GraderError names the field);
``grade(grader, make_sample(text), item)`` and ``grade_many`` give rewards, never raising for a
sample the grader cannot score (its reward is 0 and the Grade says why).
"""

from tunesmith.graders.grade import Context, Grade, answer_sample, grade, grade_many, make_sample
from tunesmith.graders.schema import Grader, GraderError, parse_grader

__all__ = [
    "Context",
    "Grade",
    "Grader",
    "GraderError",
    "answer_sample",
    "grade",
    "grade_many",
    "make_sample",
    "parse_grader",
]
