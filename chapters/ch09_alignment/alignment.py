# Generated from chapters/ch09_alignment/ch09_alignment.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Chapter 9: aligning the SFT model to preferences, two ways, on the same pairs.

The story, top to bottom: preference pairs (prompt, chosen, rejected) that a program makes
and judges (chapter 8's checkable tasks: chosen = the verified answer, rejected = a judged
sample of the SFT model or a constructed wrong, malformed or rambling answer); sequence
log-probabilities over response tokens only (chapter 8's masks); the DPO loss (Rafailov et
al. 2023) with its TRL-style metrics and a training loop on chapter 6's optimizer and
schedule; RLHF: a reward model (the SFT model with a scalar head, Bradley-Terry loss) and
PPO's clipped objective with a group baseline as in GRPO (Shao et al. 2024) and a KL penalty
to the frozen reference; the same GRPO with chapter 8's checker as a verifiable reward on
fresh training-side prompts, and expert iteration beside it; the comparison (win rate by the programmatic judge, accuracy, KL,
cost, paired bootstrap intervals); and `ensure_dpo_model()`, `ensure_rlhf_model()`,
`ensure_rl_checker_model()` and `ensure_expert_iteration_model()` for chapter 10.
"""

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chapters.ch02_tokenizer.tokenizer import EOT_ID, PAD_ID, lone_surrogate_at
from chapters.ch04_blocks.model import LanguageModel
from chapters.ch06_pretraining.trainer import (
    TrainingConfig,
    TrainingHistory,
    build_optimizer,
    clip_by_global_norm,
    lr_at,
)
from chapters.ch08_sft.sft import (
    IGNORE_INDEX,
    TASK_FAMILIES,
    EncodedExample,
    SFTRecord,
    check_answer,
    collate,
    encode_example,
    finetune,
    response_text,
    sample_groups,
)
from chapters.course import (
    artifacts_dir,
    atomic_folder,
    atomic_write,
    digest_of,
    recipe_path,
    record_recipe,
    stale_reason,
)


@dataclass
class PreferencePair:
    """One preference: for `prompt`, `chosen` is better than `rejected`.

    `kind` says how the rejected answer was made ("sampled", "wrong", "malformed",
    "rambling"); `task` is chapter 8's checkable task, so a program can judge any answer.
    """

    prompt: str
    chosen: str
    rejected: str
    split: str  # "train" or "heldout"
    kind: str
    task: dict | None = None


def reference_answer(task: dict) -> str:
    """The answer chapter 8's task family computes for `task` (with its leading space)."""
    return TASK_FAMILIES[task["family"]].answer(task["values"])


def judge_score(task: dict, response: str) -> float:
    """The programmatic judge: 1 for a verified-correct answer, 0 for a wrong one, and a
    penalty of 0.5 for rambling (more than two words beyond the reference answer)."""
    words, reference_words = len(response.split()), len(reference_answer(task).split())
    return float(check_answer(task, response)) - 0.5 * float(words > reference_words + 2)


def judge_prefers(task: dict, first: str, second: str) -> float:
    """1 if the judge scores `first` higher, 0 if lower, 0.5 for a tie."""
    a, b = judge_score(task, first), judge_score(task, second)
    return 1.0 if a > b else 0.0 if a < b else 0.5


def constructed_negatives(
    record: SFTRecord, others: Sequence[SFTRecord], rng: random.Random
) -> list[tuple[str, str]]:
    """`(kind, response)` rejected answers built from the reference answer of `record`:
    wrong (another task's answer), malformed (the answer cut short) and rambling (the answer,
    then words that should not be there). Only answers the checker rejects are returned."""
    answer = record.response
    same_family = [other.response for other in others if other.source == record.source]
    candidates = [
        ("wrong", rng.choice(same_family) if same_family else answer + answer),
        ("malformed", answer[:-1] if len(answer.strip()) > 1 else answer + answer.strip()),
        ("rambling", answer + " " + " ".join(rng.sample(answer.split() or ["and"], 1) * 3)),
    ]
    return [
        (kind, response)
        for kind, response in candidates
        if response.strip() and response != answer and not check_answer(record.task, response)
    ]


def sample_responses(
    model: LanguageModel,
    tokenizer,
    prompt: str,
    count: int,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[EncodedExample]:
    """`count` sampled answers to one prompt (`sample_groups` for a single prompt)."""
    return sample_groups(model, tokenizer, [prompt], count, max_new_tokens, temperature, generator)[
        0
    ]


def is_terminated(example: EncodedExample) -> bool:
    return example.token_ids[-1] == EOT_ID


@dataclass
class PairReport:
    """How many pairs of each kind were made, and what was skipped (nothing silently)."""

    made: dict[str, int] = field(default_factory=dict)
    samples_correct: int = 0  # sampled answers the judge accepted (no pair from those)
    samples_unterminated: int = 0

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.made.items()))
        return (
            f"{sum(self.made.values())} pairs ({kinds}); sampled answers that were already "
            f"correct: {self.samples_correct}; unterminated samples: {self.samples_unterminated}"
        )


def build_preference_pairs(
    records: Sequence[SFTRecord],
    model: LanguageModel | None,
    tokenizer,
    samples_per_prompt: int = 2,
    seed: int = 0,
    max_new_tokens: int = 10,
    show_progress: bool = True,
) -> tuple[list[PreferencePair], PairReport]:
    """Pairs for every checkable record: chosen = its verified reference answer; rejected =
    each sample of `model` that the judge rejects (an unterminated sample is rejected as is),
    plus the constructed negatives. `model=None`, and every held-out record, get constructed
    negatives only (sampling is the slow part; held-out pairs only need to be checkable)."""
    from tqdm.auto import tqdm

    rng, report = random.Random(seed), PairReport()
    generator = torch.Generator().manual_seed(seed)
    checkable = [record for record in records if record.task is not None]
    pairs = []

    def add(record: SFTRecord, kind: str, rejected: str) -> None:
        pairs.append(
            PreferencePair(
                record.prompt, record.response, rejected, record.split, kind, record.task
            )
        )
        report.made[kind] = report.made.get(kind, 0) + 1

    sampled = [r for r in checkable if r.split == "train"] if model is not None else []
    groups = (
        sample_groups(
            model,
            tokenizer,
            [r.prompt for r in sampled],
            samples_per_prompt,
            max_new_tokens,
            1.0,
            generator,
        )
        if sampled
        else []
    )
    samples_of = {id(record): group for record, group in zip(sampled, groups, strict=True)}
    for record in tqdm(checkable, desc="preference pairs", disable=not show_progress):
        if id(record) in samples_of:
            for sample in samples_of[id(record)]:
                text = response_text(tokenizer, sample)
                if not is_terminated(sample):
                    report.samples_unterminated += 1
                    add(record, "sampled", text)
                elif check_answer(record.task, text):
                    report.samples_correct += 1
                elif text.strip():
                    add(record, "sampled", text)
        for kind, rejected in constructed_negatives(record, checkable, rng):
            add(record, kind, rejected)
    return pairs, report


PAIR_PROMPTS_PER_FAMILY = 250  # of chapter 8's 500 training tasks per family: DPO's budget


def preference_records(
    split: str, per_family: int | None = PAIR_PROMPTS_PER_FAMILY
) -> list[SFTRecord]:
    """Chapter 8's checkable records of one split ("train" or "heldout"), family by family;
    only the first `per_family` of each family (None: all of them)."""
    from chapters.ch08_sft.sft import load_sft_records

    by_family: dict[str, list[SFTRecord]] = {}
    for record in load_sft_records(split):
        if record.task is not None:
            by_family.setdefault(record.source, []).append(record)
    return [record for family in by_family.values() for record in family[:per_family]]


class Stopwatch:
    """Wall-clock and process CPU seconds of a block (`with Stopwatch() as watch:`)."""

    def __enter__(self) -> "Stopwatch":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def save_pairs(pairs: Sequence[PreferencePair], path: str | Path) -> Path:
    """One JSON object per line, written atomically."""
    with atomic_write(path) as file:
        for pair in pairs:
            file.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
    return Path(path)


def _pair_from_line(line: bytes) -> PreferencePair:
    """One line of `save_pairs`' file as a PreferencePair; ValueError says what is wrong."""
    data = json.loads(line.decode("utf-8"))  # UnicodeDecodeError and JSONDecodeError: ValueError
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    text_fields = ("prompt", "chosen", "rejected", "split", "kind")
    if wrong := [key for key in text_fields if not isinstance(data.get(key), str)]:
        raise ValueError(f"missing or non-string field(s) {wrong}")
    if not isinstance(data.get("task"), dict | None):
        raise ValueError("task must be an object or null")
    if unknown := sorted(set(data) - set(PreferencePair.__dataclass_fields__)):
        raise ValueError(f"unknown field(s) {unknown}")
    for key in ("prompt", "chosen", "rejected"):
        if (index := lone_surrogate_at(data[key])) is not None:
            raise ValueError(f"{key} holds a lone surrogate at index {index}")
    return PreferencePair(**data)


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Read pairs written by `save_pairs`; a malformed line raises with its number and why."""
    pairs = []
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    pairs.append(_pair_from_line(line))
                except ValueError as error:  # Unicode errors are ValueErrors too
                    raise ValueError(
                        f"{path}, line {number}: not a preference pair ({error}). The file is "
                        "written by save_pairs: delete it to have it built again."
                    ) from error
    return pairs


def token_logprobs(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label | earlier tokens) and the mask of response tokens, both (B, T).

    Positions whose label is IGNORE_INDEX (the prompt and the padding, chapter 8's masks)
    get 0 and mask False.
    """
    logits = model(inputs)  # (B, T, V)
    mask = labels != IGNORE_INDEX
    safe = labels.clamp(min=0)
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe[..., None]).squeeze(-1)
    return logps * mask, mask


def sequence_logprobs(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(response | prompt), summed over response tokens only: (B, T) -> (B,)."""
    logps, _ = token_logprobs(model, inputs, labels)
    return logps.sum(dim=-1)


def check_same_vocabulary(policy: nn.Module, reference: nn.Module) -> None:
    """Policy and reference must score the same token ids: the log-ratio means nothing otherwise."""
    a, b = policy.config.vocab_size, reference.config.vocab_size
    if a != b:
        raise ValueError(
            f"the reference model has a vocabulary of {b} tokens but the policy has {a}: their "
            "log-probabilities of the same token ids cannot be compared. Use a copy of the "
            "policy's starting point (the SFT model) as the reference."
        )


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss (Rafailov et al. 2023, eq. 7) on sequence log-probs, each (B,).

    The implicit reward of a response is beta * log(pi / pi_ref); the loss is
    -log sigmoid(reward_chosen - reward_rejected), averaged. With `label_smoothing` eps the
    preference is assumed flipped with probability eps (conservative DPO):
    -(1 - eps) log sigmoid(z) - eps log sigmoid(-z). Returns (loss, the metrics TRL logs).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (it scales the implicit reward), got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    reward_chosen = beta * (policy_chosen - reference_chosen)  # (B,)
    reward_rejected = beta * (policy_rejected - reference_rejected)
    margin = reward_chosen - reward_rejected
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    metrics = {
        "rewards/chosen": reward_chosen.mean().item(),
        "rewards/rejected": reward_rejected.mean().item(),
        "rewards/margins": margin.mean().item(),
        "rewards/accuracies": (margin > 0).float().mean().item(),
    }
    return losses.mean(), metrics


@dataclass
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample


@dataclass
class PairEncodeReport:
    """Pairs kept, and pairs skipped because they teach nothing or cannot be encoded."""

    kept: int = 0
    identical: int = 0  # chosen == rejected: the loss has no preference to learn
    empty: int = 0  # an empty chosen or rejected response
    too_long: int = 0

    def __str__(self) -> str:
        return (
            f"{self.kept} pairs kept; skipped {self.identical} with chosen == rejected, "
            f"{self.empty} with an empty response, {self.too_long} too long for the context"
        )


def encode_pairs(
    pairs: Sequence[PreferencePair], tokenizer, max_tokens: int
) -> tuple[list[EncodedPair], PairEncodeReport]:
    """Encode chosen and rejected with chapter 8's `encode_example`; skip and count the bad."""
    encoded, report = [], PairEncodeReport()
    for pair in pairs:
        if pair.chosen == pair.rejected:
            report.identical += 1
            continue
        if not pair.chosen.strip() or not pair.rejected.strip():
            report.empty += 1
            continue
        try:
            chosen = encode_example(tokenizer, pair.prompt, pair.chosen, max_tokens)
            rejected = encode_example(tokenizer, pair.prompt, pair.rejected, max_tokens)
        except ValueError:  # ResponseTooLong is a ValueError
            report.too_long += 1
            continue
        encoded.append(EncodedPair(chosen, rejected))
        report.kept += 1
    return encoded, report


def pair_logprobs(
    model: nn.Module, pairs: Sequence[EncodedPair]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of chosen and rejected, each (B,), in one padded batch."""
    batch = collate([pair.chosen for pair in pairs] + [pair.rejected for pair in pairs])
    logps = sequence_logprobs(model, batch.inputs, batch.labels)  # (2B,)
    return logps[: len(pairs)], logps[len(pairs) :]


@dataclass
class DPOConfig:
    """A DPO run: `steps` updates of `batch_size` pairs, chapter 6's AdamW and schedule."""

    steps: int = 60
    batch_size: int = 16
    learning_rate: float = 3e-4
    beta: float = 0.1
    label_smoothing: float = 0.0
    nll_weight: float = 0.0  # > 0 adds the SFT loss on the chosen answers (RPO)
    dpo_weight: float = 1.0  # 0 keeps the SFT loss alone: the ablation of the preference term
    warmup_steps: int = 5
    grad_clip: float = 1.0
    log_interval: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dpo_weight < 0 or self.nll_weight < 0 or self.dpo_weight + self.nll_weight == 0:
            raise ValueError(
                f"DPOConfig needs dpo_weight and nll_weight >= 0, not both 0 (got "
                f"{self.dpo_weight} and {self.nll_weight}): there would be nothing to train on"
            )

    def training_config(self, context_length: int) -> TrainingConfig:
        """The chapter 6 config that `build_optimizer` and `lr_at` read."""
        return TrainingConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            context_length=context_length,
            learning_rate=self.learning_rate,
            min_lr=self.learning_rate / 10,
            warmup_steps=min(self.warmup_steps, self.steps),
            weight_decay=0.0,
            grad_clip=self.grad_clip,
            seed=self.seed,
        )


CHAPTER_DPO = DPOConfig(  # the chapter's run
    steps=200, batch_size=16, learning_rate=2e-4, beta=0.3, nll_weight=1.0, log_interval=40
)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy that never trains: the reference the policy is kept close to."""
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def chosen_nll(policy_chosen: torch.Tensor, pairs: Sequence[EncodedPair]) -> torch.Tensor:
    """Chapter 8's loss on the chosen answers: the mean over pairs of each chosen response's
    negative log-likelihood per token, from its summed log-prob (B,)."""
    tokens = torch.tensor([len(p.chosen.token_ids) - p.chosen.response_start for p in pairs])
    return -(policy_chosen / tokens).mean()


def train_dpo(
    policy: LanguageModel,
    reference: LanguageModel,
    pairs: Sequence[EncodedPair],
    config: DPOConfig,
    on_log: Callable[[int, LanguageModel], dict] | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """Train `policy` in place with DPO against the frozen `reference`, plus `nll_weight`
    times `chosen_nll` (RPO); one log row per `log_interval` steps (loss, the TRL metrics,
    the chosen NLL, and whatever `on_log(step, policy)` adds)."""
    from tqdm.auto import tqdm

    check_same_vocabulary(policy, reference)
    if not pairs:
        raise ValueError("no preference pairs to train on: check the PairEncodeReport")
    settings = config.training_config(policy.config.context_length)
    optimizer = build_optimizer(policy, settings)
    rng = random.Random(config.seed)
    order: list[int] = []
    history = []
    policy.train()
    for step in tqdm(range(config.steps), desc="DPO", disable=not show_progress):
        if len(order) < config.batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch = [pairs[order.pop()] for _ in range(min(config.batch_size, len(pairs)))]
        with torch.no_grad():
            reference_chosen, reference_rejected = pair_logprobs(reference, batch)
        policy_chosen, policy_rejected = pair_logprobs(policy, batch)
        loss, metrics = dpo_loss(
            policy_chosen,
            policy_rejected,
            reference_chosen,
            reference_rejected,
            config.beta,
            config.label_smoothing,
        )
        nll = chosen_nll(policy_chosen, batch)
        loss = config.dpo_weight * loss + config.nll_weight * nll
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_by_global_norm(policy.parameters(), config.grad_clip)
        optimizer.step()
        if (step + 1) % config.log_interval == 0 or step == config.steps - 1:
            row = {"step": step + 1, "loss": loss.item(), **metrics, "nll": nll.item()}
            if on_log is not None:
                policy.eval()
                row.update(on_log(step + 1, policy))
                policy.train()
            history.append(row)
    policy.eval()
    return history


@torch.no_grad()
def probe(
    policy: LanguageModel,
    reference: LanguageModel,
    tokenizer,
    records: Sequence[SFTRecord],
    samples_per_prompt: int = 2,
    max_new_tokens: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Sample answers from the policy: their KL to the reference in nats per response (the
    mean of log pi(y|x) - log pi_ref(y|x), an unbiased Monte Carlo estimate of
    KL(pi || pi_ref)) and their mean judge score (the true, programmatic reward)."""
    check_same_vocabulary(policy, reference)
    generator = torch.Generator().manual_seed(seed)
    kl, score, count = 0.0, 0.0, 0
    for record in records:
        samples = sample_responses(
            policy, tokenizer, record.prompt, samples_per_prompt, max_new_tokens, 1.0, generator
        )
        batch = collate(samples)
        difference = sequence_logprobs(policy, batch.inputs, batch.labels) - sequence_logprobs(
            reference, batch.inputs, batch.labels
        )
        kl += difference.sum().item()
        score += sum(judge_score(record.task, response_text(tokenizer, s)) for s in samples)
        count += len(samples)
    return {"kl": kl / count, "judge": score / count}


def hidden_states(model: LanguageModel, token_ids: torch.Tensor) -> torch.Tensor:
    """The final-norm hidden states (B, T, d_model): chapter 4's forward without the LM head."""
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)
    x = model.token_embedding(token_ids)  # (B, T, d_model)
    for block in model.blocks:
        x = block(x, positions=positions)
    return model.final_norm(x)


class RewardModel(nn.Module):
    """The SFT model's body with a scalar head read at the last token of each sequence (the
    `<|endoftext|>` of a finished answer): one reward per (prompt, response)."""

    def __init__(self, body: LanguageModel) -> None:
        super().__init__()
        self.body = body
        self.config = body.config
        self.head = nn.Linear(body.config.d_model, 1)
        nn.init.zeros_(self.head.weight)  # start at reward 0 for everything
        nn.init.zeros_(self.head.bias)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """token ids (B, T) right-padded, real lengths (B,) -> rewards (B,)."""
        states = hidden_states(self.body, token_ids)  # (B, T, C)
        last = states[torch.arange(token_ids.shape[0]), lengths - 1]  # (B, C)
        return self.head(last).squeeze(-1)

    def score(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """Rewards (B,) of encoded examples of any lengths."""
        lengths = torch.tensor([len(example.token_ids) for example in examples])
        ids = torch.full((len(examples), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, example in enumerate(examples):  # right padding: (B, T_max)
            ids[row, : len(example.token_ids)] = torch.tensor(example.token_ids)
        return self(ids, lengths)


def bradley_terry_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """-log P(chosen > rejected) with P = sigmoid(r_chosen - r_rejected), averaged."""
    return -F.logsigmoid(reward_chosen - reward_rejected).mean()


@torch.no_grad()
def pairwise_accuracy(
    reward_model: RewardModel, pairs: Sequence[EncodedPair], batch_size: int = 64
) -> float:
    """The fraction of pairs whose chosen answer gets the higher reward."""
    reward_model.eval()
    right = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rewards = reward_model.score([p.chosen for p in chunk] + [p.rejected for p in chunk])
        right += int((rewards[: len(chunk)] > rewards[len(chunk) :]).sum())
    return right / max(1, len(pairs))


REWARD_MODEL_STEPS = 30  # the chapter's run


def train_reward_model(
    reward_model: RewardModel,
    pairs: Sequence[EncodedPair],
    steps: int = 60,
    batch_size: int = 16,
    learning_rate: float = 3e-4,
    seed: int = 0,
    show_progress: bool = True,
) -> list[float]:
    """Bradley-Terry training on the pairs with chapter 6's optimizer; returns the losses."""
    from tqdm.auto import tqdm

    settings = DPOConfig(steps, batch_size, learning_rate, seed=seed).training_config(
        reward_model.config.context_length
    )
    optimizer = build_optimizer(reward_model, settings)
    rng = random.Random(seed)
    losses = []
    reward_model.train()
    for step in tqdm(range(steps), desc="reward model", disable=not show_progress):
        batch = rng.sample(list(pairs), min(batch_size, len(pairs)))
        rewards = reward_model.score([p.chosen for p in batch] + [p.rejected for p in batch])
        loss = bradley_terry_loss(rewards[: len(batch)], rewards[len(batch) :])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_by_global_norm(reward_model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    reward_model.eval()
    return losses


@torch.no_grad()
def best_of_n_accuracy(
    reward_model: RewardModel,
    model: LanguageModel,
    tokenizer,
    records: Sequence[SFTRecord],
    n: int = 8,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean accuracy of `n` sampled answers, accuracy of the one the reward model prefers),
    over `records`."""
    generator = torch.Generator().manual_seed(seed)
    groups = sample_groups(model, tokenizer, [r.prompt for r in records], n, 10, 1.0, generator)
    mean, best = 0.0, 0.0
    for record, samples in zip(records, groups, strict=True):
        correct = [check_answer(record.task, response_text(tokenizer, s)) for s in samples]
        mean += sum(correct) / n
        best += correct[int(reward_model.score(samples).argmax())]
    return mean / len(records), best / len(records)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's baseline: each reward minus its group's mean, over the group's std.
    rewards (P, G): G samples for each of P prompts -> advantages (P, G). A group whose
    rewards are all equal gets zero advantages (nothing to prefer)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def clipped_objective(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), per token, averaged over each
    sequence's response tokens then over sequences (to be maximised).

    logps, old_logps, mask: (B, T); advantages: (B,). Returns (objective, fraction clipped).
    """
    ratio = torch.exp(logps - old_logps)  # (B, T)
    advantage = advantages[:, None]  # (B, 1): one advantage for every token of a sequence
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantage
    per_token = torch.minimum(unclipped, clipped)
    tokens = mask.sum(dim=1).clamp(min=1)
    objective = ((per_token * mask).sum(dim=1) / tokens).mean()
    was_clipped = ((clipped < unclipped) & mask).float().sum() / mask.sum().clamp(min=1)
    return objective, was_clipped


def kl_estimate(
    logps: torch.Tensor, reference_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(policy || reference) per token on tokens sampled from the policy, with the
    low-variance, always non-negative estimator exp(d) - d - 1, d = log ref - log policy
    (Schulman 2020, "k3"); averaged over masked tokens. All inputs (B, T)."""
    difference = reference_logps - logps
    per_token = torch.exp(difference) - difference - 1
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class GRPOConfig:
    """A policy-optimisation run: per step, `prompts_per_step` prompts x `group_size` samples
    scored by the reward, then `ppo_epochs` clipped updates with a KL penalty (none at 0)."""

    steps: int = 30
    prompts_per_step: int = 8
    group_size: int = 4
    ppo_epochs: int = 2
    clip: float = 0.2
    kl_coef: float = 0.05
    learning_rate: float = 2e-4
    max_new_tokens: int = 12
    temperature: float = 1.0
    log_interval: int = 5
    seed: int = 0


CHAPTER_GRPO = GRPOConfig(
    steps=10, prompts_per_step=4, group_size=4, max_new_tokens=8, log_interval=5
)


# rewards(records, groups) -> (P, G): one score per sampled answer, group by group
Reward = Callable[[Sequence[SFTRecord], list[list[EncodedExample]]], torch.Tensor]


def checker_reward(tokenizer) -> Reward:
    """The verifiable reward: 1 for an answer that stopped by itself and that chapter 8's
    checker accepts, 0 otherwise."""

    def reward(records: Sequence[SFTRecord], groups: list[list[EncodedExample]]) -> torch.Tensor:
        return torch.tensor(
            [
                [
                    float(
                        is_terminated(s) and check_answer(record.task, response_text(tokenizer, s))
                    )
                    for s in group
                ]
                for record, group in zip(records, groups, strict=True)
            ]
        )

    return reward


def reward_model_reward(reward_model: RewardModel) -> Reward:
    """The learned reward: the reward model's score of each answer."""

    def reward(records: Sequence[SFTRecord], groups: list[list[EncodedExample]]) -> torch.Tensor:
        return reward_model.score([s for group in groups for s in group]).view(len(groups), -1)

    return reward


def fresh_training_task(rng: random.Random, families: Sequence[str] | None = None) -> SFTRecord:
    """A new task from the training side only: a family, a training template and values from
    the training side of the split, all drawn by `rng`; never a held-out template or value."""
    family = TASK_FAMILIES[rng.choice(list(families or TASK_FAMILIES))]
    values = family.sample(rng, False)
    prompt = rng.choice(family.train_templates).format(**values)
    task = {"family": family.name, "values": values}
    return SFTRecord(prompt, family.answer(values), "train", family.name, task)


def train_grpo(
    policy: LanguageModel,
    reference: LanguageModel,
    reward: RewardModel | Reward,
    tokenizer,
    prompts: Sequence[SFTRecord] | Callable[[random.Random], SFTRecord],
    config: GRPOConfig,
    on_log: Callable[[int, LanguageModel], dict] | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """PPO with a group baseline; returns one row per step (mean reward, advantage spread, KL,
    fraction clipped, groups skipped, judge accuracy of the samples).

    `reward` is a reward model or a `Reward` function (e.g. `checker_reward`); `prompts` a
    fixed list to draw from or a function that makes a fresh task (`fresh_training_task`).
    Groups whose answers all score the same have no advantage: they are skipped, counted."""
    from tqdm.auto import tqdm

    check_same_vocabulary(policy, reference)
    if isinstance(reward, RewardModel):
        reward = reward_model_reward(reward)
    settings = DPOConfig(
        config.steps, config.prompts_per_step, config.learning_rate, warmup_steps=0
    )
    settings = settings.training_config(policy.config.context_length)
    optimizer = build_optimizer(policy, settings)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    for step in tqdm(range(config.steps), desc="GRPO", disable=not show_progress):
        if callable(prompts):
            records = [prompts(rng) for _ in range(config.prompts_per_step)]
        else:
            records = rng.sample(list(prompts), config.prompts_per_step)
        groups = sample_groups(
            policy,
            tokenizer,
            [record.prompt for record in records],
            config.group_size,
            config.max_new_tokens,
            config.temperature,
            generator,
        )
        with torch.no_grad():
            rewards = reward(records, groups)  # (P, G)
        informative = rewards.std(dim=1) > 0  # (P,): groups that prefer some answer
        kl = clipped = advantages = torch.zeros(1)
        if informative.any():
            samples = [
                s for group, keep in zip(groups, informative, strict=True) if keep for s in group
            ]
            advantages = group_advantages(rewards[informative]).flatten()
            batch = collate(samples)
            with torch.no_grad():
                old_logps, mask = token_logprobs(policy, batch.inputs, batch.labels)
                if config.kl_coef:
                    reference_logps, _ = token_logprobs(reference, batch.inputs, batch.labels)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, settings)
            policy.train()
            for _ in range(config.ppo_epochs):
                logps, _ = token_logprobs(policy, batch.inputs, batch.labels)
                objective, clipped = clipped_objective(
                    logps, old_logps, advantages, mask, config.clip
                )
                loss = -objective
                if config.kl_coef:
                    kl = kl_estimate(logps, reference_logps, mask)
                    loss = loss + config.kl_coef * kl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_by_global_norm(policy.parameters(), 1.0)
                optimizer.step()
            policy.eval()
        answers = [response_text(tokenizer, s) for group in groups for s in group]
        tasks = [record.task for record in records for _ in range(config.group_size)]
        row = {
            "step": step + 1,
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item(),
            "advantage_abs": advantages.abs().mean().item(),
            "kl": kl.item(),
            "clipped": clipped.item(),
            "skipped_groups": int((~informative).sum()),
            "sample_accuracy": sum(map(check_answer, tasks, answers)) / len(answers),
        }
        if on_log is not None and (
            (step + 1) % config.log_interval == 0 or step == config.steps - 1
        ):
            row.update(on_log(step + 1, policy))
        history.append(row)
    return history


def expert_iteration(
    policy: LanguageModel,
    tokenizer,
    prompts: Callable[[random.Random], SFTRecord],
    prompt_count: int,
    samples_per_prompt: int,
    config: TrainingConfig,
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[TrainingHistory, dict[str, int]]:
    """The simplest RL: sample answers to fresh prompts, keep the distinct ones the checker
    accepts (and that stopped by themselves), fine-tune on them with chapter 8's `finetune`.
    Returns the fine-tuning history and the counts (prompts, samples, kept, prompts solved)."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    records = [prompts(rng) for _ in range(prompt_count)]
    groups = sample_groups(
        policy, tokenizer, [r.prompt for r in records], samples_per_prompt, 10, 1.0, generator
    )
    kept: dict[tuple[int, ...], EncodedExample] = {}
    solved = 0
    for record, group in zip(records, groups, strict=True):
        right = [
            s
            for s in group
            if is_terminated(s) and check_answer(record.task, response_text(tokenizer, s))
        ]
        solved += bool(right)
        kept.update((tuple(s.token_ids), s) for s in right)
    counts = {
        "prompts": prompt_count,
        "samples": prompt_count * samples_per_prompt,
        "kept": len(kept),
        "solved": solved,
    }
    if not kept:
        raise ValueError("no sampled answer was verified: nothing to fine-tune on")
    history = finetune(
        policy, list(kept.values()), config, packing=True, show_progress=show_progress
    )
    return history, counts


CHECKER_GRPO = GRPOConfig(  # the chapter's RL run with the checker as reward
    steps=240,
    prompts_per_step=8,
    group_size=8,
    ppo_epochs=1,
    kl_coef=0.0,
    learning_rate=5e-4,
    max_new_tokens=10,
    log_interval=20,
)
# expert iteration fine-tunes on its kept answers at GRPO's rate (chapter 8's finetune)
EXPERT_ITERATION_TRAINING = {"steps": 100, "learning_rate": 5e-4, "min_lr": 5e-5}


@torch.no_grad()
def greedy_answers(
    model: LanguageModel, tokenizer, records: Sequence[SFTRecord], max_new_tokens: int = 10
) -> list[str]:
    """The model's greedy answer to each record's prompt (no end token)."""
    groups = sample_groups(model, tokenizer, [r.prompt for r in records], 1, max_new_tokens, 0.0)
    return [response_text(tokenizer, group[0]) for group in groups]


@torch.no_grad()
def sampled_answers(
    model: LanguageModel,
    tokenizer,
    records: Sequence[SFTRecord],
    samples_per_prompt: int = 8,
    seed: int = 0,
    max_new_tokens: int = 10,
) -> list[str]:
    """`samples_per_prompt` answers to each record's prompt at temperature 1, prompt by prompt
    (so record k's answers are at k * samples_per_prompt ...)."""
    generator = torch.Generator().manual_seed(seed)
    groups = sample_groups(
        model,
        tokenizer,
        [r.prompt for r in records],
        samples_per_prompt,
        max_new_tokens,
        1.0,
        generator,
    )
    return [response_text(tokenizer, sample) for group in groups for sample in group]


def paired_bootstrap(
    scores: Sequence[float], baseline: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of scores - baseline, low, high): a 95% percentile bootstrap over prompts of the
    paired difference (both lists score the same prompts, in the same order)."""
    if len(scores) != len(baseline) or not scores:
        raise ValueError(
            f"need paired scores of the same prompts; got {len(scores)} and {len(baseline)}"
        )
    difference = torch.tensor(scores, dtype=torch.float64) - torch.tensor(
        baseline, dtype=torch.float64
    )
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(difference), (resamples, len(difference)), generator=generator)
    means = difference[picks].mean(dim=1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return difference.mean().item(), low.item(), high.item()


def compare_to_sft(
    answers: Sequence[str], sft_answers: Sequence[str], records: Sequence[SFTRecord]
) -> dict[str, float]:
    """Win rate against the SFT answers by the judge (ties count half), the wins and losses,
    task accuracy and the judge's mean score. `answers[k]` and `sft_answers[k]` answer the
    same prompt: `records[k]`, or with several answers per prompt, `records[k // n]`."""
    per_prompt = len(answers) // len(records)
    tasks = [record.task for record in records for _ in range(per_prompt)]
    if not len(tasks) == len(answers) == len(sft_answers):
        raise ValueError(
            f"{len(answers)} answers and {len(sft_answers)} SFT answers for {len(records)} "
            "prompts: give both models the same number of answers to every prompt"
        )
    outcomes = list(map(judge_prefers, tasks, answers, sft_answers))
    return {
        "win_rate": sum(outcomes) / len(tasks),
        "wins": outcomes.count(1.0),
        "losses": outcomes.count(0.0),
        "accuracy": sum(map(check_answer, tasks, answers)) / len(tasks),
        "judge_score": sum(map(judge_score, tasks, answers)) / len(tasks),
    }


def training_state_megabytes(*models: nn.Module, trained: Sequence[nn.Module] = ()) -> float:
    """Memory a method holds while it trains: every model's weights in float32, plus Adam's
    gradient and two moment buffers for the trained ones (activations come on top)."""
    weights = sum(p.numel() for model in models for p in model.parameters())
    extra = sum(3 * p.numel() for model in trained for p in model.parameters())
    return 4 * (weights + extra) / 2**20


def chapter_recipe(name: str) -> dict:
    """What builds the artifact `name` of artifacts_dir("ch09"): the chapter's settings and the
    digests of its inputs (each made current first). An artifact whose recorded recipe differs
    is rebuilt by its `ensure_*`, so a changed setting or SFT model never loads a stale one."""
    from chapters.ch08_sft.sft import ensure_sft_dataset, ensure_sft_model

    ensure_sft_model()
    recipe = {"sft_model": digest_of(artifacts_dir("ch08") / "sft")}
    if name == "preference_pairs.jsonl":
        recipe["sft_dataset"] = digest_of(ensure_sft_dataset())
        return {**recipe, "prompts_per_family": PAIR_PROMPTS_PER_FAMILY}
    if name in ("reward_model", "dpo"):
        recipe["pairs"] = digest_of(ensure_preference_pairs())
    settings = {
        "reward_model": {"steps": REWARD_MODEL_STEPS},
        "dpo": asdict(CHAPTER_DPO),
        "rlhf": asdict(CHAPTER_GRPO),
        "rl_checker": asdict(CHECKER_GRPO),
        "expert_iteration": {"grpo": asdict(CHECKER_GRPO), **EXPERT_ITERATION_TRAINING},
    }
    if name not in settings:
        raise ValueError(f"no artifact {name!r} in chapter 9; the known ones: {sorted(settings)}")
    if name == "rlhf":
        ensure_reward_model()
        recipe["reward_model"] = digest_of(artifacts_dir("ch09") / "reward_model")
        recipe["prompts_per_family"] = PAIR_PROMPTS_PER_FAMILY
    return {**recipe, "settings": settings[name]}


def save_preference_pairs(pairs: Sequence[PreferencePair]) -> Path:
    """The chapter's pairs to artifacts_dir("ch09"), with their recipe beside them."""
    path = artifacts_dir("ch09") / "preference_pairs.jsonl"
    recipe = chapter_recipe(path.name)
    recipe_path(path).unlink(missing_ok=True)
    save_pairs(pairs, path)
    record_recipe(path, recipe)
    return path


def ensure_preference_pairs() -> Path:
    """The pairs (train and held-out) as JSONL in artifacts_dir("ch09"), built from chapter 8's
    SFT model and checkable tasks on first use and whenever their recipe changed."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch08_sft.sft import ensure_sft_model

    path = artifacts_dir("ch09") / "preference_pairs.jsonl"
    if reason := stale_reason(path, chapter_recipe(path.name)):
        print(f"Preference pairs in the artifacts: {reason}. Building them.")
        tokenizer, model = ensure_tokenizer(), ensure_sft_model()
        records = preference_records("train") + preference_records("heldout")
        pairs, report = build_preference_pairs(records, model, tokenizer)
        print(f"preference pairs: {report}")
        save_preference_pairs(pairs)
    return path


def _save_model_folder(name: str, save: Callable[[Path], None]) -> Path:
    """Build artifacts_dir("ch09")/name in a temporary folder, rename it into place, and
    record the chapter's recipe for it beside it (`chapter_recipe`)."""
    target = artifacts_dir("ch09") / name
    recipe = chapter_recipe(name)
    recipe_path(target).unlink(missing_ok=True)  # a kill before the new recipe: rebuilt
    with atomic_folder(target) as folder:
        save(folder)
    record_recipe(target, recipe)
    return target


def _needs_training(name: str, what: str) -> bool:
    """True (and says why) when artifacts_dir("ch09")/name is missing or stale."""
    reason = stale_reason(artifacts_dir("ch09") / name, chapter_recipe(name))
    if reason:
        print(f"{what} in the artifacts: {reason}. Training it.")
    return reason is not None


def save_reward_model(reward_model: RewardModel) -> Path:
    """Body as chapter 4's safetensors folder, head as a small torch file, atomically."""

    def save(folder: Path) -> None:
        reward_model.body.save_pretrained(folder / "body")
        torch.save(reward_model.head.state_dict(), folder / "head.pt")

    return _save_model_folder("reward_model", save)


def load_reward_model(folder: str | Path) -> RewardModel:
    folder = Path(folder)
    reward_model = RewardModel(LanguageModel.from_pretrained(folder / "body"))
    reward_model.head.load_state_dict(torch.load(folder / "head.pt", weights_only=True))
    return reward_model.eval()


def _encoded_training_pairs(tokenizer, context_length: int) -> list[EncodedPair]:
    pairs = [p for p in load_pairs(ensure_preference_pairs()) if p.split == "train"]
    return encode_pairs(pairs, tokenizer, context_length)[0]


def ensure_reward_model() -> RewardModel:
    """The Bradley-Terry reward model from artifacts_dir("ch09")/"reward_model", trained first
    if missing."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch08_sft.sft import ensure_sft_model

    folder = artifacts_dir("ch09") / "reward_model"
    if _needs_training("reward_model", "Reward model"):
        reward_model = RewardModel(ensure_sft_model())
        pairs = _encoded_training_pairs(ensure_tokenizer(), reward_model.config.context_length)
        train_reward_model(reward_model, pairs, steps=REWARD_MODEL_STEPS)
        save_reward_model(reward_model)
    return load_reward_model(folder)


def ensure_dpo_model() -> LanguageModel:
    """The DPO-aligned model from artifacts_dir("ch09")/"dpo", trained from the SFT model
    with the chapter's settings first if missing or stale."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch08_sft.sft import ensure_sft_model

    folder = artifacts_dir("ch09") / "dpo"
    if _needs_training("dpo", "DPO model"):
        policy = ensure_sft_model()
        pairs = _encoded_training_pairs(ensure_tokenizer(), policy.config.context_length)
        train_dpo(policy, frozen_copy(policy), pairs, CHAPTER_DPO)
        _save_model_folder("dpo", policy.save_pretrained)
    return LanguageModel.from_pretrained(folder)


def ensure_rlhf_model() -> LanguageModel:
    """The RLHF (GRPO) model from artifacts_dir("ch09")/"rlhf", trained from the SFT model
    against `ensure_reward_model()` with the chapter's settings first if missing or stale."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch08_sft.sft import ensure_sft_model

    folder = artifacts_dir("ch09") / "rlhf"
    if _needs_training("rlhf", "RLHF model"):
        policy, reward_model = ensure_sft_model(), ensure_reward_model()
        prompts = preference_records("train")
        train_grpo(
            policy, frozen_copy(policy), reward_model, ensure_tokenizer(), prompts, CHAPTER_GRPO
        )
        _save_model_folder("rlhf", policy.save_pretrained)
    return LanguageModel.from_pretrained(folder)


def ensure_rl_checker_model() -> LanguageModel:
    """The model of GRPO with the checker as reward, from artifacts_dir("ch09")/"rl_checker",
    trained from the SFT model with `CHECKER_GRPO` first if missing or stale."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch08_sft.sft import ensure_sft_model

    folder = artifacts_dir("ch09") / "rl_checker"
    if _needs_training("rl_checker", "Checker-RL model"):
        tokenizer, policy = ensure_tokenizer(), ensure_sft_model()
        reward = checker_reward(tokenizer)
        train_grpo(
            policy, frozen_copy(policy), reward, tokenizer, fresh_training_task, CHECKER_GRPO
        )
        _save_model_folder("rl_checker", policy.save_pretrained)
    return LanguageModel.from_pretrained(folder)


def ensure_expert_iteration_model() -> LanguageModel:
    """The expert-iteration model from artifacts_dir("ch09")/"expert_iteration", trained from
    the SFT model on as many sampled answers as `CHECKER_GRPO` sees, first if missing or stale."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch08_sft.sft import ensure_sft_model, sft_training_config

    folder = artifacts_dir("ch09") / "expert_iteration"
    if _needs_training("expert_iteration", "Expert-iteration model"):
        tokenizer, policy = ensure_tokenizer(), ensure_sft_model()
        prompts = CHECKER_GRPO.steps * CHECKER_GRPO.prompts_per_step
        config = sft_training_config(**EXPERT_ITERATION_TRAINING)
        expert_iteration(
            policy, tokenizer, fresh_training_task, prompts, CHECKER_GRPO.group_size, config
        )
        _save_model_folder("expert_iteration", policy.save_pretrained)
    return LanguageModel.from_pretrained(folder)
