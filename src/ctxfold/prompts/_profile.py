"""One profile object per kind of root model: what it is told and which guard rails it gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ctxfold.models import Message
from ctxfold.prompts._feedback import describe_cells
from ctxfold.sandbox import CellResult


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything the root model of one kind sees, and the guard rails its runs have.

    ``name`` selects the prompt files (``system.md`` / ``system_small.md`` ...). The switches are
    the small-model guard rails (``NOTES-local-models.md``): a strong model's profile runs none it
    does not need.

    Attributes:
        repeated_code_guard: a reply whose code all ran before is not run again, and the model
            is told so (small models repeat a failed search until the budget ends).
        asks_for_citations: the system prompt asks for ``cite()`` when the answer states facts
            from the input. Off for small models: they follow the demonstration, not extra
            instructions (``NOTES-local-models.md``), and every line costs prefill each turn.
    """

    name: str
    repeated_code_guard: bool = False
    asks_for_citations: bool = True

    def first_messages(
        self,
        question: str,
        inputs: Sequence[tuple[str, str]],
        *,
        system: str,
        demonstration: Sequence[Message] = (),
        earlier: str = "",
    ) -> list[Message]:
        """The conversation a run starts from: the system prompt, the demonstration's turns
        (its last message, "Done. New task.", joins the task message), the task message over
        ``inputs`` (``(name, description)`` pairs) and ``earlier`` questions of a session,
        ending with the question."""
        from ctxfold.prompts import task_message

        task = task_message(question, list(inputs), earlier)
        messages: list[Message] = [{"role": "system", "content": system}]
        if demonstration:
            messages += list(demonstration[:-1])
            task = f"{demonstration[-1]['content']}\n\n{task}"
        messages.append({"role": "user", "content": task})
        return messages

    def feedback(self, cells: list[CellResult], *, cell_seconds: float, turns_left: int) -> str:
        """What the model is told after its code ran."""
        return describe_cells(cells, cell_seconds=cell_seconds) + self.turns_left_note(turns_left)

    def no_code(self) -> str:
        """Told after a reply without code."""
        return NO_CODE

    def repeated_code(self, turn: int, turns_left: int) -> str:
        """Told when a reply's code all ran before, at ``turn``."""
        return REPEATED_CODE.format(turn=turn) + self.turns_left_note(turns_left)

    def final_request(self, reason: str) -> str:
        """The last root call's request, when a budget ended the run with no answer."""
        return FINAL_REQUEST.format(reason=reason)

    def schema_mismatch(self, errors: str) -> str:
        """Added to a cell's stderr when the answer set ready does not fit the schema."""
        from ctxfold.prompts import SCHEMA_MISMATCH

        return SCHEMA_MISMATCH.format(errors=errors)

    def compaction_request(self) -> str:
        """Asks the root model to sum up its turns so far (they are then replaced by it)."""
        return COMPACTION_REQUEST

    def compacted(self, summary: str) -> list[Message]:
        """The two messages that stand for the compacted turns."""
        return [
            {"role": "assistant", "content": f"Notes on my earlier turns:\n{summary}"},
            {"role": "user", "content": COMPACTED},
        ]

    def ready_refused(self) -> str:
        """Added to a cell's stderr when ``answer["ready"]`` came before any output."""
        return READY_REFUSED

    @staticmethod
    def turns_left_note(left: int) -> str:
        return f"\n\n[{left} turns left]" if left <= 3 else ""


COMPACTION_REQUEST = (
    "Your conversation is getting long, so the turns so far will be replaced by your notes. "
    "Write them now, as plain text without code: what you found (numbers, names, partial "
    "answers), which REPL variables hold what, what is left to do. Be brief and exact."
)

COMPACTED = (
    "Go on from your notes. The full conversation so far is in the REPL as `history` (a list of "
    '{"role", "content"} dicts) if you need an exact output again.'
)

NO_CODE = (
    "Your reply had no ```python code block, so nothing ran. Reply with Python code in a "
    '```python block. To finish, set answer["content"] and then answer["ready"] = True in code.'
)

REPEATED_CODE = (
    "This is the same code you ran at turn {turn}; it would print the same output again, so it "
    "was not run. Write different code: search for another or a shorter word of the question, "
    "or look at another part of the data."
)

FINAL_REQUEST = (
    "The run's budget is spent ({reason}). Reply now with your best final answer to the question "
    "as plain text, without code."
)

READY_REFUSED = (
    '\n[ctxfold] answer["ready"] was set before you had seen any printed output, so it was '
    "reset to False. Check the output above; if it supports the answer, set "
    'answer["ready"] = True again.'
)

ELIDED = "[elided: an older output, to save space]"

PROFILES: dict[str, Profile] = {
    "concise": Profile("concise"),
    "small": Profile("small", repeated_code_guard=True, asks_for_citations=False),
}


def profile(name: str) -> Profile:
    """The profile called ``name`` (``"concise"`` or ``"small"``)."""
    return PROFILES[name]


def profile_for(requested: str, model_name: str) -> str:
    """The profile a run uses: ``requested``, or for ``"auto"`` the small one for the embedded
    local models and the concise one for the rest."""
    if requested != "auto":
        return requested
    return "small" if model_name.startswith("local") else "concise"
