"""Config of the teachers (`teacher:`): each endpoint, its price, and how the run calls them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tutorloop.loop.core.config_meta import ADDED_LATER, RESUME_SAFE, Section
from tutorloop.loop.core.serve_config import ServeSection


class PriceSection(Section):
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)

    def cost_usd(self, tokens_in: int, tokens_out: int) -> float:
        """Dollars for a call of these token counts (prices are per million tokens)."""
        return (tokens_in * self.input_per_mtok + tokens_out * self.output_per_mtok) / 1e6


class TeacherEndpoint(Section):
    name: str = "teacher"
    backend: Literal["openai", "replay", "program"] = "replay"
    model: str = "text-davinci-002"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api: Literal["chat", "completions"] = "chat"
    task_tag: str | None = Field(None, description="training task name for this teacher's rationales")
    loss_weight: float = Field(1.0, ge=0)
    price: PriceSection = PriceSection()
    serve: ServeSection | None = Field(
        None, description="start this teacher's server for the run", json_schema_extra=ADDED_LATER
    )
    recording: str | None = Field(
        None,
        description="replay: the user's own recorded outputs, a .json file in the "
        "shipped recorded format or a .jsonl of question and "
        "rationale (default: the shipped recordings of data.task)",
        json_schema_extra=ADDED_LATER,
    )
    rounds: Literal["all", "core", "tailored"] = Field(
        "all",
        description="the rounds this teacher teaches: all, core (round 0) or tailored (rounds >= 1)",
        json_schema_extra=ADDED_LATER,
    )

    @field_validator("serve")
    @classmethod
    def _served_through_openai(cls, serve: ServeSection | None, info: ValidationInfo) -> ServeSection | None:
        if serve is not None and info.data.get("backend") != "openai":
            raise ValueError(f"a served teacher needs backend 'openai' (got {info.data.get('backend')!r})")
        if serve is not None and info.data.get("base_url") is not None:
            raise ValueError("set base_url or serve, not both: tutorloop picks the address of a server it starts")
        return serve

    @field_validator("recording")
    @classmethod
    def _replayed(cls, recording: str | None, info: ValidationInfo) -> str | None:
        if recording is not None and info.data.get("backend") != "replay":
            raise ValueError(f"a recording is replayed by backend 'replay' (got {info.data.get('backend')!r})")
        return recording


class TeacherSection(Section):
    teachers: list[TeacherEndpoint] = [TeacherEndpoint()]
    strategies: list[Literal["zero_shot_cot", "few_shot_cot", "cote", "rp", "crop", "teacher_forcing", "tailored"]] = [
        "zero_shot_cot"
    ]
    diverse_samples: int = Field(1, ge=1, description="n rationales per question (diverse reasoning)")
    tailored_samples: int = Field(
        1,
        ge=1,
        description="replies per taught mistake: the first at `temperature`, "
        "the others at `diverse_temperature` (distinct self-reflection positives)",
    )
    tailored_show_answer: bool = Field(
        False,
        description="tell the teacher the gold answer in the tailored prompt (rationalization); the "
        "untailored arm (training.selection: random) then asks with rp, the same family",
        json_schema_extra=ADDED_LATER,
    )
    check_equations: bool = Field(
        False,
        description="numeric tasks: reject a rationale whose written equations 'a op b = c' are false "
        "(reject_reason false_equation), read with the decoding calculator's parser",
        json_schema_extra=ADDED_LATER,
    )
    check_reaches_answer: bool = Field(
        False,
        description="reject a rationale whose reasoning does not arrive at its (right) answer before stating "
        "it (reject_reason answer_not_reached): numeric tasks must write the answer's value in the "
        "reasoning, coin_flip's last coin state must be the answer's; the answer copied after reasoning "
        "that ends elsewhere, which showing the teacher the answer invites",
        json_schema_extra=ADDED_LATER,
    )
    temperature: float = Field(0.0, ge=0)
    diverse_temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(256, ge=1)
    # Pace, patience and budget of the calls: safe to change on resume (stored answers stay valid).
    concurrency: int = Field(8, ge=1, json_schema_extra=RESUME_SAFE)
    requests_per_minute: int | None = Field(None, ge=1, json_schema_extra=RESUME_SAFE)
    tokens_per_minute: int | None = Field(None, ge=1, json_schema_extra=RESUME_SAFE)
    timeout_s: float = Field(60.0, gt=0, json_schema_extra=RESUME_SAFE)
    max_retries: int = Field(5, ge=0, json_schema_extra=RESUME_SAFE)
    retry_backoff_s: float = Field(
        1.0, ge=0, description="first retry delay; doubles each retry, plus jitter", json_schema_extra=RESUME_SAFE
    )
    retry_backoff_max_s: float = Field(
        60.0, ge=0, description="cap on one retry delay (also on Retry-After)", json_schema_extra=RESUME_SAFE
    )
    retry_unusable: bool = Field(True, description="retry empty, malformed or truncated responses")
    max_cost_usd: float | None = Field(None, ge=0, json_schema_extra=RESUME_SAFE)
    prompts_dir: str | None = Field(None, description="folder of prompt templates overriding the built-in ones")
    num_actors: int = Field(1, ge=1, json_schema_extra=RESUME_SAFE)
    exemplars: int = Field(4, ge=1, description="in-context examples in few_shot_cot and teacher_forcing prompts")
    max_consecutive_failures: int = Field(
        8,
        ge=1,
        description="connection failures in a row after which an openai teacher's phase stops (circuit breaker)",
        json_schema_extra=RESUME_SAFE,
    )
    preflight_timeout_s: float = Field(
        15.0,
        gt=0,
        description="time an openai teacher gets to list its models before a phase sends it anything",
        json_schema_extra=RESUME_SAFE,
    )

    @field_validator("teachers")
    @classmethod
    def _unique_names(cls, teachers: list[TeacherEndpoint]) -> list[TeacherEndpoint]:
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if not teachers:
            raise ValueError("at least one teacher is needed")
        # Both kinds are checked whatever run.rounds says: run.rounds may grow on resume.
        for kind in ("core", "tailored"):
            if not any(t.rounds in ("all", kind) for t in teachers):
                raise ValueError(
                    f"no teacher teaches the {kind} rounds: give one of them `rounds: all` or `rounds: {kind}`"
                )
        return teachers
