"""Publishing to the Hugging Face Hub: what a failed push means in words, and the local copy it leaves behind."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

try:  # huggingface_hub >= 2 talks HTTP through httpx2, 1.x through httpx
    from httpx2 import HTTPError as _TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import HTTPError as _TransportError


class HubPushError(RuntimeError):
    """Publishing to the Hugging Face Hub failed. The model and its card were saved locally first."""


def _explain(err: BaseException) -> str:
    """What went wrong, in words, from huggingface_hub's typed errors (or the HTTP client's)."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, LocalTokenNotFoundError):
        return _NO_TOKEN
    if isinstance(err, GatedRepoError):
        return f"the repository is gated and the token has not been granted access (HTTP {status})"
    if isinstance(err, RepositoryNotFoundError):
        return f"the repository or its namespace was not found, or the token may not see it (HTTP {status})"
    if isinstance(err, HfHubHTTPError) and status is not None:
        if status == 401:
            return "the Hub rejected the token (HTTP 401 Unauthorized): check that it is valid and not expired"
        if status == 403:
            return "the token may not write to this repository (HTTP 403 Forbidden): use a token with write access"
        if status >= 500:
            return f"the Hub answered with a server error (HTTP {status}); try again later"
        return f"the Hub answered HTTP {status}" + (f": {err.server_message}" if err.server_message else "")
    if isinstance(err, _TransportError):
        return f"the Hub could not be reached ({type(err).__name__}: {err})"
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first_line}"


_NO_TOKEN = (
    "no Hugging Face token was found (pass --hub_token, set HF_TOKEN, or run `hf auth login` with a token that has "
    "write access)"
)


@contextmanager
def hub_push_errors(trainer: Any, token: str | None = None, card_kwargs: Mapping[str, Any] | None = None):
    """
    Around `Trainer.push_to_hub`: when no token is found, or the upload fails (Hub unreachable, token rejected, ...),
    save the student and its card (`card_kwargs` for `create_model_card`) to `trainer.args.output_dir` and raise a
    [`HubPushError`] naming the Hub endpoint (`huggingface_hub.constants.ENDPOINT`), the repository, what failed,
    and the command that uploads the saved output later. With `blocking=False`, upload errors surface in the future.
    """
    args = trainer.args
    repo_id = trainer.hub_model_id or args.hub_model_id or Path(args.output_dir).absolute().name
    output_dir = os.path.abspath(args.output_dir)

    def fail(what: str) -> HubPushError:
        trainer.save_model(_internal_call=True)
        trainer.create_model_card(**{"repo_id": repo_id, **(card_kwargs or {})})
        return HubPushError(
            f"Could not push to the Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}), repository '{repo_id}': "
            f"{what}. The student and its model card are saved in {output_dir}; once the problem is solved, push "
            f"them with `hf upload {repo_id} {output_dir} --exclude 'checkpoint-*'`."
        )

    if (token if token is not None else args.hub_token) is None and huggingface_hub.get_token() is None:
        raise fail(_NO_TOKEN)
    try:
        yield
    except (HfHubHTTPError, LocalTokenNotFoundError, _TransportError, OSError) as err:
        # The repository is created before the student is saved: make sure the local output is complete.
        raise fail(_explain(err)) from err
