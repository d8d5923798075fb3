"""The Prefect UI's Custom run form, one per preset: every field opens holding the value a run uses.

A flow's own parameters are Optional (None = the preset's value), so that a run started from the
API or from Python gives only what it changes. Rendered as is, the form shows each of them as an
`int | None` toggle set to None and never says what the run will use. So `ulmfit serve` deploys
each flow once per preset (`ulmfit/cpu`, `compare/smoke`, ...):

- `preset` is frozen to the deployment's preset (Prefect shows it read-only);
- every other parameter gets the preset's resolved value (`form_values` of the flow's module), as
  the deployment's parameters and as its schema's defaults;
- in the schema, a field that now has a value loses its `None` branch: the form shows a plain
  number, list or dropdown, filled in. A field with no value in the preset (`classify.min_steps`,
  `rerun`) stays optional.

Submitting the form sends every value; each becomes an override equal to the preset's value,
except those the user changed. The deployment's description says what the preset is for.
"""
from __future__ import annotations

import copy
from typing import Any

# What each preset is for, and its time (BENCHMARKS.md): the deployment's description in the UI.
PRESET_PURPOSE = {
    "smoke": "a test run on tiny slices of the data, about 1 minute on 2 CPU cores",
    "cpu": "the default: the whole recipe at a small size, about 25 minutes on 2 CPU cores",
    "cpu-long": "the cpu preset with 4x its IMDb text in stage 2, where the transfer starts to pay; about 48 minutes "
                "on 2 CPU cores",
    "full": "the paper's sizes on all of WikiText-103 and IMDb, for a GPU (hours)",
}


def description(flow: Any, preset: str) -> str:
    first = flow.description.strip().splitlines()[0] if flow.description else flow.name
    purpose = PRESET_PURPOSE.get(preset, "")
    return f"Preset `{preset}`" + (f": {purpose}." if purpose else ".") + f" {first}"


def plain_schema(schema: dict, values: dict) -> dict:
    """A copy of a flow's parameter schema whose fields with a value lose their None branch and take
    the value as their default (nested settings too: their definitions are rewritten)."""
    schema = copy.deepcopy(schema)
    definitions = schema.get("definitions", {})
    for name, prop in schema["properties"].items():
        value = values.get(name)
        ref = _ref(prop)
        if ref and isinstance(value, dict):
            definition = definitions[ref]
            for field, field_value in value.items():
                if field in definition["properties"]:
                    _fill(definition["properties"][field], field_value)
            prop["default"] = value
        else:
            _fill(prop, value)
    return schema


def _ref(prop: dict) -> str | None:
    ref = prop.get("$ref") or next((p.get("$ref") for p in prop.get("allOf", []) if "$ref" in p), None)
    return ref.split("/")[-1] if ref else None


def _fill(prop: dict, value: Any) -> None:
    if value is None:
        return
    branches = prop.get("anyOf")
    if branches:
        typed = [b for b in branches if b.get("type") != "null"]
        if len(typed) == 1:
            del prop["anyOf"]
            prop.update(typed[0])
    prop["default"] = value
