"""Error messages: whatever their source, one line that keeps all of its content."""

from __future__ import annotations

from flatscope.errors import one_line


def test_one_line_keeps_every_line_of_a_multiline_error():
    keras_error = (
        "in user code:\n\n"
        '    File "model.py", line 3, in call\n'
        "        return x @ w\n\n"
        "    ValueError: shapes (1, 4) and (3, 2)   do not match\n"
    )
    assert one_line(keras_error) == (
        'in user code: | File "model.py", line 3, in call | return x @ w | '
        "ValueError: shapes (1, 4) and (3, 2) do not match"
    )


def test_one_line_leaves_a_line_as_it_is():
    assert one_line("model file /m.keras does not exist") == "model file /m.keras does not exist"
    assert one_line("") == ""
