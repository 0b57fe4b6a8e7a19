"""Untrusted text made safe for a terminal: the one rendering path for names, records, log lines and reasons.

A model folder name, a run directory name, a dataset record, a worker log line
or a failure reason is data. Written raw, an ``ESC ] 0 ;`` sets the window title,
an ``ESC ] 52 ;`` writes the person's clipboard and ``ESC [ 2 J`` clears the screen;
a ``[`` in it is rich markup that can crash the print (``[]starting[/]``). So
every such string goes through :func:`clean` (whole escape sequences removed,
every other control character shown as ``�``, tab and newline kept) and reaches
rich or Textual only as :func:`as_text` (a ``Text``, never parsed as markup) or
:func:`as_markup` (escaped, for an f-string that holds finetty's own markup).

Ground floor: the standard library only (rich is imported where a ``Text`` is made).
"""

from __future__ import annotations

import re

#: Whole escape sequences, 7-bit and 8-bit: CSI (``ESC [``), OSC (``ESC ]`` up to BEL or ST, or to the end
#: when unterminated), DCS/SOS/PM/APC strings, and the two- and three-byte ``ESC`` forms.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]P^_X][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|[\x90\x98\x9d\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
)
#: What is left of the control characters after the sequences: C0 but tab and newline, DEL, C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


def clean(text: object, *, one_line: bool = False) -> str:
    """``text`` with no escape sequence and no control character but tab and newline (``�`` in their place).

    Line ends (``\\r\\n``, a lone ``\\r``) become ``\\n``; ``one_line`` turns every line end and tab into a
    space, for a table cell or a header."""
    text = str(text).replace("\r\n", "\n")
    text = _SEQUENCE.sub("", text)
    text = text.replace("\r", "\n")
    text = _CONTROL.sub(REPLACEMENT, text)
    if one_line:
        text = text.replace("\n", " ").replace("\t", " ")
    return text


def one_line(text: object) -> str:
    """:func:`clean` for a cell, a header or a notification: one line."""
    return clean(text, one_line=True)


def as_markup(text: object, *, one_line: bool = False) -> str:
    """Cleaned and markup-escaped: safe inside an f-string of finetty's own rich markup."""
    from rich.markup import escape

    return escape(clean(text, one_line=one_line))


def as_text(text: object, style: str = "", *, one_line: bool = False):
    """A rich ``Text`` of the cleaned string: rendered as written, never parsed as markup."""
    from rich.text import Text

    return Text(clean(text, one_line=one_line), style=style)
