"""Reading the CLI's ``--json`` output in tests."""
import json


def json_out(capsys) -> dict:
    """The JSON document the last command printed (after any progress text)."""
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])
