"""How a setting is declared, read from an environment, and refused.

One declaration per setting: `setting(...)` puts its environment name (and any old name still
read), its unit and its doc on a pydantic field, and a `Group` (a pydantic-settings
`BaseSettings`) gathers the settings of one concern. `load(Group, env)` reads a group from any
mapping (the process's environment by default: tests and `chaos` pass their own), and turns
pydantic's validation errors into one `SettingsError` that names the variable, what it must be
and what was given.

Only the command line ends the process (`worker/cli.py`): everything here raises.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict


class CommandError(Exception):
    """A command cannot go on, for a reason its operator can fix (a setting, a missing stream, a refused
    login). Library code raises it; only the CLI turns it into an exit: the message on stderr, status 1
    (what a SystemExit with the message did, from one place)."""


class SettingsError(CommandError, ValueError):
    """A setting that is malformed, out of range, unknown (a likely typo) or contradicts another."""


# --- value grammars ---------------------------------------------------------------------------------------

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
FLAG_GRAMMAR = "on or off (also 1/0, true/false, yes/no)"


def flag(value: object) -> bool:
    """The one boolean grammar of every setting: 1/0, true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(FLAG_GRAMMAR)


def comma_list(value: object) -> object:
    """"a,b,c" (blanks dropped) as a tuple; a list or tuple as it is."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def none_if_blank(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


Flag = Annotated[bool, BeforeValidator(flag)]
#: Comma-separated in the environment (never JSON, which pydantic-settings would expect of a tuple).
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(comma_list)]
#: A text whose blank value means unset.
OptionalText = Annotated[str | None, BeforeValidator(none_if_blank)]


# --- declaring ------------------------------------------------------------------------------------------


def setting(default: Any, env: str, doc: str, *, unit: str | None = None, old: tuple[str, ...] = (), must: str | None = None,
            shown_default: str | None = None, secret: bool = False, file_key: str | None = None, **constraints: Any) -> Any:  # fmt: skip
    """A setting: its default, environment name (`old`: names still read, the first given wins), doc and unit.

    `must` says what a malformed value must be when the type alone does not (a range, a format);
    `shown_default` is the default as the docs show it when it is computed (a URL derived from another);
    a `secret` is left out of `repr` and of the docs' default column; `file_key`: its key in a settings file (the policy's)."""
    extra = {"env": env, "old": list(old), "unit": unit, "must": must, "shown_default": shown_default, "secret": secret, "file_key": file_key}
    return Field(default, validation_alias=AliasChoices(env, *old) if old else env, description=doc, json_schema_extra=extra, repr=not secret, **constraints)


def meta(info: FieldInfo) -> dict:
    return info.json_schema_extra  # type: ignore[return-value]


# --- reading --------------------------------------------------------------------------------------------

#: The mapping `load` reads (pydantic-settings reads os.environ; a test or `chaos` passes its own).
_ENVIRONMENT: ContextVar[Mapping[str, str] | None] = ContextVar("settings_environment", default=None)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, over the mapping given to `load`."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRONMENT.get()
        env = os.environ if env is None else env
        return {name: value for name, value in env.items() if value.strip()}  # blank: unset (compose passes `${X:-}`)


class Group(BaseSettings):
    """The settings of one concern. `title` heads its part of the docs' table."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True)
    title: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        return init_settings, _Environment(settings_cls)


G = TypeVar("G", bound=Group)


def load(group: type[G], env: Mapping[str, str] | None = None) -> G:
    """`group` read from `env` (default: the process's environment); a bad value raises SettingsError."""
    token = _ENVIRONMENT.set(os.environ if env is None else env)
    try:
        return group()
    except ValidationError as error:
        raise SettingsError(explain(group, error, os.environ if env is None else env)) from None
    finally:
        _ENVIRONMENT.reset(token)


def given_name(info: FieldInfo, env: Mapping[str, str]) -> str:
    """The name the value came in under (the canonical one, or an old one still read)."""
    m = meta(info)
    return next((name for name in (m["env"], *m["old"]) if (env.get(name) or "").strip()), m["env"])


def must_be(info: FieldInfo) -> str:
    """What a value of this field must be, in words."""
    m = meta(info)
    if m["must"]:
        return m["must"]
    kind = info.annotation
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if get_origin(kind) is not Literal:  # `X | None`: what X must be
        kinds = [k for k in get_args(kind) if k is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else kind
    if get_origin(kind) is Literal:
        choices = [str(c) for c in get_args(kind)]
        return f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
    return {bool: FLAG_GRAMMAR, int: "an integer", float: "a number"}.get(kind, "text")


def explain(group: type[Group], error: ValidationError, env: Mapping[str, str]) -> str:
    """pydantic's errors as lines of `VARIABLE must be WHAT, got 'VALUE'`."""
    by_env = {}
    for info in group.model_fields.values():
        for name in (meta(info)["env"], *meta(info)["old"]):
            by_env[name] = info
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        info = by_env.get(name) or group.model_fields.get(name)
        if info is None:
            lines.append(str(problem["msg"]))
            continue
        variable = given_name(info, env)
        lines.append(f"{variable} must be {must_be(info)}, got {env.get(variable, problem.get('input'))!r}")
    return "; ".join(lines)


# --- the names ------------------------------------------------------------------------------------------


def declared(group) -> Iterator[tuple[str, FieldInfo]]:
    """(field name, field) of each declared setting of a group (a model's other fields, such as the policy's `source`, left out)."""
    return ((name, info) for name, info in group.model_fields.items() if isinstance(info.json_schema_extra, dict) and "env" in info.json_schema_extra)


def declared_names(groups) -> Iterator[str]:
    for group in groups:
        for _, info in declared(group):
            yield meta(info)["env"]
            yield from meta(info)["old"]


def check_names(env: Mapping[str, str], groups, also: tuple[str, ...] = ()) -> None:
    """Refuse a variable under the executor's own prefixes that is not declared and reads like a
    declared one mistyped (`JITO_TIPBASE`): a typo would otherwise leave the default in force, silently.

    Only near misses (similar, within two characters of length) are refused: other tools share these
    prefixes (the temporal CLI reads TEMPORAL_TLS_CERT_DATA, the nats CLI NATS_CONTEXT)."""
    known = set(declared_names(groups)) | set(also)
    prefixes = {name.split("_", 1)[0] + "_" for name in known}
    for name in env:
        if name in known or not name.startswith(tuple(prefixes)):
            continue
        near = [m for m in difflib.get_close_matches(name, known, n=3, cutoff=0.85) if abs(len(m) - len(name)) <= 2]
        if near:
            raise SettingsError(f"{name} is not a setting: did you mean {near[0]}?")
