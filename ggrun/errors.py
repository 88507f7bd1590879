"""The one error family of ggrun.

Library code raises subclasses of :class:`GgrunError`; the CLI turns each into a
single line on stderr and exit code 1 (``GGRUN_DEBUG=1`` shows the traceback).
Messages are written for the user: they say what is wrong and, where it helps,
what to do about it.
"""

from __future__ import annotations


class GgrunError(Exception):
    """Base class of every error ggrun raises on purpose."""

    exit_code = 1


class ModelNotFound(GgrunError):
    """A model path does not exist, or an alias is unknown or not downloaded."""


class UnsupportedArchitecture(GgrunError):
    """The model's architecture is not one llama.cpp (or the converter) knows."""


class InvalidModelFile(GgrunError):
    """A file is not a valid GGUF (or safetensors) file: truncated, corrupt or hostile."""


class ContextOverflow(GgrunError):
    """A prompt cannot fit in the model's context window."""

    def __init__(self, message: str, *, n_tokens: int = 0, n_ctx: int = 0) -> None:
        super().__init__(message)
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx


class GrammarError(GgrunError):
    """A grammar or JSON schema cannot be used to constrain generation."""


class SchemaMismatch(GrammarError):
    """A value the grammar let through fails a schema check that only validation holds
    (``multipleOf``, number bounds, ``uniqueItems``, ...): another draw can pass it."""


class TemplateError(GgrunError):
    """A chat template failed to render, or tried something the sandbox forbids."""


class ConversionError(GgrunError):
    """A Hugging Face checkpoint cannot be converted to GGUF."""


class PresetError(GgrunError):
    """A YAML preset (sampling profile, alias, task) is malformed."""


class PullError(GgrunError):
    """A model could not be downloaded, assembled or verified."""


class InvalidArgument(GgrunError):
    """A parameter value is out of range or inconsistent with others."""


class InsufficientMemory(GgrunError):
    """A model and its context would not fit in the memory of the chosen device."""


class ApiError(GgrunError):
    """An HTTP error: its status, message and OpenAI-style type, parameter and code.

    Each API adapter (:mod:`ggrun.api`) renders it in its own wire format.
    """

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    @classmethod
    def of(cls, e: GgrunError) -> ApiError:
        """The HTTP error for a library error raised by a request (a 400)."""
        if isinstance(e, ApiError):
            return e
        if isinstance(e, ContextOverflow):
            return cls(400, str(e), code="context_length_exceeded")
        return cls(400, str(e))
