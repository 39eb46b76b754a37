"""The reference pages, generated from the code at every docs build (mkdocs-gen-files runs this
script, see mkdocs.yml): the command line from its argparse parser, the training parameters from
RetrainConfig. Written from the code, they cannot drift from it.

`python docs/gen_reference.py` prints both pages, to read them without building the site.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also when not installed

from transferflow.cli import build_parser  # noqa: E402
from transferflow.config import RetrainConfig  # noqa: E402

CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/configuration.md"


def _text(text: object) -> str:
    """Plain text for a markdown table cell: one line, `|` escaped, and `<`, `>`, `&` escaped
    outside code spans (help texts say `<dataset>-<backbone>`, which would vanish as HTML)."""
    parts = str(text).replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # even parts are outside backticks
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def _code(text: object) -> str:
    """Code in a table cell. A `|` (`N|auto`) cannot be escaped inside a markdown code span
    there, so such text becomes an HTML <code> element with the pipe as an entity."""
    text = str(text)
    if "|" in text or "`" in text:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return "<code>" + escaped.replace("|", "&#124;").replace("`", "&#96;") + "</code>"
    return f"`{text}`"


def commands(parser: argparse.ArgumentParser | None = None) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(command, one-line help, parser) for every leaf command, depth first, in the parser's order:
    ("models list", "every registered version ...", parser)."""
    parser = parser or build_parser()
    found = []
    for action in parser._actions:  # argparse keeps its subparsers here and nowhere public
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            command = child.prog.removeprefix("transferflow ")
            nested = commands(child)
            found += nested or [(command, helps.get(name) or "", child)]
    return found


def _default(action: argparse.Action, config_defaults: dict) -> str:
    """The default a user gets: argparse's, or the config field's for flags made from
    RetrainConfig (they default to SUPPRESS so that unset flags stay unset)."""
    flag_only = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
    if not action.option_strings or flag_only:
        return ""
    default = action.default
    if default is argparse.SUPPRESS:  # a RetrainConfig flag: the field's default applies
        default = config_defaults.get(action.dest)
    if default is None:
        return ""
    return _code(_shown(default))


def _shown(default: object) -> str:
    default = getattr(default, "value", default)
    if default == []:
        return "none"
    if isinstance(default, bool):
        return json.dumps(default)
    return str(default)


def _meaning(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text as --help prints it (%(default)s expanded), without a trailing
    "(default: X)" that the default column shows, and with the choices when argparse has them."""
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    text = re.sub(r"\s*\(default: [^();]*\)$", "", text)
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += " One of: " + ", ".join(f"`{choice}`" for choice in action.choices) + "."
    return _text(text)


def _invocation(action: argparse.Action) -> str:
    """"--port PORT", "-v, --verbose", "NAME[:VERSION|@ALIAS]"; choices go to the meaning column."""
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    value = action.metavar or ("CHOICE" if action.choices else action.dest.upper())
    return ", ".join(f"{option} {value}" for option in action.option_strings)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    config_defaults = {name: field.get_default(call_default_factory=True)
                       for name, field in RetrainConfig.model_fields.items()}
    rows = []
    for action in parser._actions:
        skipped = isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        if skipped or action.help == argparse.SUPPRESS:
            continue  # --help, the command groups, hidden flags (watch --polls, for tests)
        default = _default(action, config_defaults)
        rows.append(f"| {_code(_invocation(action))} | {default} | {_meaning(parser, action)} |")
    return rows


def _section(title: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().strip().removeprefix("usage: ")
    usage = usage.replace("\n" + " " * len("usage: "), "\n")  # continuation lines, dedented
    description = parser.description or summary
    lines = [f"## `{title}`", "", _text(description[:1].upper() + description[1:]), "",
             "```", usage, "```", ""]
    rows = _options(parser)
    if rows:
        lines += ["| argument | default | meaning |", "|---|---|---|", *rows, ""]
    return lines


def render_cli() -> str:
    parser = build_parser()
    lines = ["# Command line", "",
             "Every `transferflow` command with its arguments, generated from the parser itself "
             "at every docs build (`transferflow COMMAND --help` prints the same). The flags of "
             "`transferflow train` are the fields of the [configuration](configuration.md).", ""]
    lines += _section("transferflow", parser.description or "", parser)
    for command, summary, child in commands(parser):
        lines += _section(f"transferflow {command}", summary, child)
    return "\n".join(lines)


def _resolve(prop: dict, definitions: dict) -> dict:
    """A property with its $ref (an enum's definition) merged in."""
    if "$ref" in prop:
        prop = {**definitions.get(prop["$ref"].rsplit("/", 1)[-1], {}), **prop}
        prop.pop("$ref")
    return prop


def _type(schema: dict, definitions: dict) -> str:
    schema = _resolve(schema, definitions)
    if "anyOf" in schema:
        return " or ".join(_type(part, definitions) for part in schema["anyOf"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}), definitions)}"
    return kind


def _constraints(schema: dict, definitions: dict) -> str:
    """Ranges and patterns, as markdown for a table cell."""
    schema = _resolve(schema, definitions)
    parts = [_constraints(part, definitions) for part in schema.get("anyOf", [])]
    parts += [f"{word} {schema[key]}" for key, word in (("minimum", "≥"), ("exclusiveMinimum", "&gt;"),
                                                         ("maximum", "≤"), ("exclusiveMaximum", "&lt;"))
              if key in schema]
    if "pattern" in schema:
        parts.append(f"matches {_code(schema['pattern'])}")
    return ", ".join(part for part in parts if part)


def render_config() -> str:
    schema = RetrainConfig.model_json_schema()
    definitions = schema.get("$defs", {})
    train = next(parser for command, _, parser in commands() if command == "train")
    flags = {action.dest: action.option_strings for action in train._actions if action.option_strings}
    lines = ["# Configuration", "",
             "`transferflow.config.RetrainConfig`, generated from the model itself at every docs build. "
             "The same fields are the flags of `transferflow train` (`--head-epochs` for `head_epochs`), "
             "the parameters of the `retrain` deployments (the Prefect UI's form, `make trigger "
             "PARAMS='{...}'`) and the `config` saved in every version's metadata. "
             "[Operate](../operate.md#configuration) explains how to set them.", "",
             "| field | flag | type | default | constraints | meaning |", "|---|---|---|---|---|---|"]
    for name, field in RetrainConfig.model_fields.items():
        prop = schema["properties"].get(name, {})
        default = field.get_default(call_default_factory=True)
        shown = "–" if default is None else _code(_shown(default))
        flag = " ".join(_code(option) for option in flags.get(name, [])) or "–"
        lines.append(f"| `{name}` | {flag} | {_text(_type(prop, definitions))} | {shown} | "
                     f"{_constraints(prop, definitions)} | {_text(field.description or '')} |")
    return "\n".join(lines) + "\n"


def write_pages() -> None:
    import mkdocs_gen_files

    for path, text in ((CLI_PAGE, render_cli()), (CONFIG_PAGE, render_config())):
        with mkdocs_gen_files.open(path, "w") as page:
            page.write(text)


if __name__ == "<run_path>":  # mkdocs-gen-files runs its scripts with runpy.run_path
    write_pages()
elif __name__ == "__main__":
    print(render_config())
    print(render_cli())
