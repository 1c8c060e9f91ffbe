"""What counts as a credential-named key, shared by the config check (a composed config
is written into the package) and the code snapshot (it copies config files).

A key is credential-named when its last name part (parts split at ``_ - . space`` and
camelCase) is a credential noun: ``token``, ``secret``, ``password``, ``passwd``,
``passphrase``, ``credential(s)``, ``apikey``..., or its last two parts are ``<kind> key``
for a kind of ``api access secret private auth client signing encryption master``.
So ``api_key``, ``apiKey``, ``hf_token``, ``AWS_SECRET_ACCESS_KEY``, ``client_secret``,
``db_password`` are credential-named; ``max_tokens``, ``tokenizer``, ``num_tokens``,
``token_budget``, ``api_key_file``, ``secrets_dir`` are not, nor are the tokenizer's
special tokens (``pad_token``, ``eos_token``...) or counts (``max_token``).

A key only counts when it carries a value: null, an empty string, ``???`` and
true/false (a switch such as ``use_credentials``) carry none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

NOUNS = frozenset({
    "token", "secret", "password", "passwd", "passphrase", "credential", "credentials",
    "apikey", "accesskey", "secretkey", "privatekey", "authtoken", "accesstoken",
})
KEY_KINDS = frozenset({"api", "access", "secret", "private", "auth", "client", "signing", "encryption", "master"})
# "<word>_token" that names a vocabulary entry or a count, never a credential.
ORDINARY_TOKENS = frozenset({
    "pad", "bos", "eos", "unk", "mask", "sep", "cls", "start", "end", "stop", "special", "image",
    "sentinel", "max", "min", "num", "n", "total", "per", "count",
})
# Bytes that any credential-named key contains (case-insensitively): a cheap pre-filter
# before a file is parsed. A superset of what credential_name() accepts.
CANDIDATE = re.compile(
    rb"(?i)token|secret|passw|passphrase|credential|"
    rb"(?:api|access|private|auth|client|signing|encryption|master)[\W_]*key"
)
_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

ENV_HINT = ("read it from an environment variable or a file under secrets/ (never snapshotted) "
            "in your code")
TRACKER_HINT = ("export SWANLAB_API_KEY (MLflow: MLFLOW_TRACKING_TOKEN) or put the key in "
                "secrets/swanlab_api_key")


def name_parts(name: str) -> list[str]:
    """``"AWS_SECRET_ACCESS_KEY"`` -> aws, secret, access, key; ``"apiKey"`` -> api, key."""
    return [p.lower() for p in _PARTS.findall(str(name))]


def credential_name(name: Any) -> bool:
    """Whether a key's name says it holds a credential (see the module's doc)."""
    parts = name_parts(str(name))
    if not parts:
        return False
    last = parts[-1]
    if last in NOUNS:
        return not (last == "token" and len(parts) > 1 and parts[-2] in ORDINARY_TOKENS)
    return last == "key" and len(parts) > 1 and parts[-2] in KEY_KINDS


def carries_value(value: Any, *, interpolations: bool = True) -> bool:
    """Whether ``value`` could be a credential. ``interpolations=False``: a string that is
    only an ``${...}`` reference (to the environment, say) carries none itself."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "???"):
            return False
        return interpolations or not (text.startswith("${") and text.endswith("}"))
    if isinstance(value, Mapping):
        return any(carries_value(v, interpolations=interpolations) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(carries_value(v, interpolations=interpolations) for v in value)
    return True  # a number


def credential_keys(node: Any, prefix: str = "", *, interpolations: bool = True) -> Iterator[str]:
    """Dotted keys of plain data ``node`` that are credential-named and carry a value."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if credential_name(k) and carries_value(v, interpolations=interpolations):
                yield key
            else:
                yield from credential_keys(v, key, interpolations=interpolations)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from credential_keys(v, f"{prefix}[{i}]", interpolations=interpolations)


def refusal(key: str) -> str:
    """The one-line error for a credential in the config at ``key`` (never the value)."""
    hint = TRACKER_HINT if key.startswith("tracker.") else ENV_HINT
    return f"{key}: credentials are never config values (the config is written into the package); {hint}"
