"""Validate a `cdul-rt convert --to label-studio` export with label-studio-sdk's own LabelInterface.

label-studio-sdk pins numpy<2.3, so it lives in its own venv rather than in the project's:

    python -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio-sdk
    /tmp/lsvenv/bin/python scripts/check_label_studio_export.py tasks.json tasks.label_config.xml

(tests/test_convert.py runs the same check wherever label-studio-sdk is importable.)
"""

import json
import sys
from importlib.metadata import version

from label_studio_sdk.label_interface import LabelInterface


def main(tasks_path: str, config_path: str) -> int:
    interface = LabelInterface(open(config_path, encoding="utf-8").read())
    tasks = json.load(open(tasks_path, encoding="utf-8"))
    bad = 0
    for task in tasks:
        # every object tag's $variable has a value in the task data (LabelInterface.validate_task's first check;
        # validate_task itself calls validate_prediction without its argument in label-studio-sdk 2.1.2)
        missing = [o.value_name for o in interface.objects if o.value_is_variable and not task["data"].get(o.value_name)]
        errors = interface.validate_prediction(task["predictions"][0], return_errors=True)
        if missing or errors:
            bad += 1
            print(task["data"].get("path"), missing, errors)
    # the check can fail: a choice that is not in the config is reported
    broken = json.loads(json.dumps(next(t for t in tasks if t["predictions"][0]["result"])["predictions"][0]))
    broken["result"][0]["value"]["choices"] = ["not-a-class"]
    assert interface.validate_prediction(broken, return_errors=True), "validator accepted an unknown choice"
    print(f"{len(tasks)} tasks, {bad} with errors (label-studio-sdk {version('label-studio-sdk')})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
