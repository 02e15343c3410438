"""`llmclone train`: LoRA / QLoRA fine-tuning with TRL's SFTTrainer, producing a clone directory.

What makes it fast on short, uneven chat samples (see shared/docs/performance.md):
- padding-free packing (best-fit decreasing into rows of `batch_tokens`), with position ids that restart
  at every sample so packed samples never attend to each other;
- the loss only on the owner's tokens, with logits computed only at those positions and a chunk at a time
  (Gemma's 262k-token vocabulary makes the output layer most of the model; see loss.py);
- on a GPU, variable-length Flash Attention over the packed samples instead of a mask over the whole row
  (attention.py); Liger's fused RMSNorm/SwiGLU/RoPE kernels when installed; frozen weights stay in bf16
  (peft's k-bit preparation would cast ~1 GiB of them to fp32);
- gradient checkpointing only where memory asks for it, bf16 where the hardware has it.

Work in progress lives in `<clone>.partial/` (checkpoints, metrics) so `--resume` can continue it;
the clone directory itself appears only when training has finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

from llmclone.config import TrainConfig
from llmclone.dataset.io import PRIVATE_DIR, atomic_dir, check_replaceable, private_umask, write_json
from llmclone.errors import UserError
from llmclone.manifest import FORMAT_VERSION, library_versions
from llmclone.memory.recall import MEMORY, Memory
from llmclone.models.base_models import BaseModel, resolve
from llmclone.models.chat_format import ChatFormat, Recall
from llmclone.models.vocabulary import write_vocabulary
from llmclone.training.data import check_dataset, evenly_spaced, owner_tokens, read_samples, tokenized, training_samples
from llmclone.training.persona import persona_for
from llmclone.training.plan import SAMPLED_VOCABULARY_MIN, TrainPlan, plan_for
from llmclone.training.recalls import recall_settings, sample_recalls

LIKELY_TOKENS = 32768  # the base model's most likely tokens at the owner's turns, recorded for the shortlist


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; `--resume` continues."""


def partial_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def train(dataset_dir: str | Path, out: str | Path, config: TrainConfig, resume: bool = False, force: bool = False,
          quiet: bool = False, plan: TrainPlan | None = None) -> dict[str, Any]:
    """Train a clone on the dataset; returns its manifest. Raises Interrupted on Ctrl-C (after saving).
    `plan`: how to run it (default: what `plan_for` resolves on this machine)."""
    dataset_dir, out = Path(dataset_dir), Path(out).absolute()
    stats = check_dataset(dataset_dir)
    check_replaceable(out, force, "clone")
    work = partial_dir(out)
    config_key = _config_key(config, stats)
    saved: dict[str, Any] = {}
    if resume:
        if not (work / "checkpoints").is_dir() or not list((work / "checkpoints").glob("checkpoint-*")):
            raise UserError(f"nothing to resume for {out}; start training without --resume.")
        saved = json.loads((work / "run.json").read_text())
        if saved.get("config_key") != config_key:
            raise UserError(f"the checkpoint in {work} was made with other settings or data; use the same "
                            "settings, or start again without --resume.")
    # every input is checked and the model resolved before the work directory exists: a mistake leaves nothing
    base = resolve(config.model)
    plan = plan or plan_for(config, base)
    ran = saved.get("plan") or {}
    if resume and ran.get("sharding") == "fsdp" and ran.get("processes") != plan.processes:
        raise UserError(f"the checkpoint in {work} is sharded across {ran.get('processes')} processes and this "
                        f"run has {plan.processes}; resume with --num_processes {ran.get('processes')}.")
    session = TrainingSession(base, config, plan, work, quiet)
    train_samples, eval_samples = training_samples(dataset_dir, config)
    own = read_samples(dataset_dir / "train.jsonl") if config.mix_data else train_samples  # not mixed-in data
    persona = persona_for(config.persona, session.chat_format, stats.get("owner", {}), own)
    session.chat_format = dataclasses.replace(session.chat_format, persona=persona)
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    with private_umask():
        work.mkdir(parents=True, exist_ok=True)
    work.chmod(PRIVATE_DIR)
    write_json(work / "run.json", {"config_key": config_key, "config": config.model_dump(), "plan": plan.to_json()})
    try:
        if config.memory:
            memory = Memory.build(work, dataset_dir, stats, config.contacts, progress=not quiet)
            session.train_recalls, session.eval_recalls = sample_recalls(memory, dataset_dir, config, train_samples,
                                                                         eval_samples)
            memory.close()
        return _train_and_save(session, work, dataset_dir, out, config, stats, base, train_samples, eval_samples,
                               resume, quiet)
    except (Interrupted, KeyboardInterrupt):
        raise  # the checkpoint stays for --resume
    except BaseException:
        if not resume and not _latest_checkpoint(work):
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume: leave nothing behind
        raise


def _train_and_save(session: TrainingSession, work: Path, dataset_dir: Path, out: Path, config: TrainConfig,
                    stats: dict[str, Any], base: BaseModel, train_samples: list, eval_samples: list, resume: bool,
                    quiet: bool) -> dict[str, Any]:
    import torch

    trainer = session.trainer(train_samples, eval_samples)
    started = time.time()
    with _CtrlC(session):
        try:
            trainer.train(resume_from_checkpoint=_latest_checkpoint(work) if resume else None)
        except RuntimeError as err:  # a GPU's is torch.OutOfMemoryError; a CPU's says so only in its text
            if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err).lower():
                tokens = session.plan.batch_tokens
                raise UserError(f"ran out of memory; lower batch_tokens (now {tokens}) or max_length "
                                f"(now {config.max_length}), or use --quantize 4bit.") from None
            raise
    if session.interrupted:  # CtrlCStop had the trainer save a checkpoint at the end of that step
        raise Interrupted(f"training interrupted at step {trainer.state.global_step}; a checkpoint is in {work}. "
                          f"Continue with: llmclone train {dataset_dir} --out {out} --resume")
    # once, on the whole held-out set (the evaluation at the last step is skipped: CtrlCStop)
    final_eval = trainer.evaluate(session.final_eval_set, metric_key_prefix="final_eval") if eval_samples else {}
    seconds = time.time() - started
    adapter = _adapter_state(trainer.model) if session.plan.sharding == "fsdp" else None  # every process
    if not trainer.is_world_process_zero():  # under DDP and FSDP, one process writes the clone
        return {}

    with atomic_dir(out, force=True, what="clone") as tmp:
        trainer.model.save_pretrained(str(tmp / "adapter"), state_dict=adapter)
        shutil.copyfile(work / "metrics.jsonl", tmp / "metrics.jsonl")
        manifest = _manifest(base, session, stats, dataset_dir, config, trainer, final_eval, seconds)
        write_json(tmp / "clone.json", manifest)
        write_vocabulary(tmp, session.token_ids, session.likely_ids)
        if (work / MEMORY).is_dir():
            shutil.copytree(work / MEMORY, tmp / MEMORY)
        plot_losses(tmp / "metrics.jsonl", tmp / "loss.png")
    shutil.rmtree(work, ignore_errors=True)
    return manifest


class TrainingSession:
    """The model, tokenizer and TRL trainer for one run, built as its plan says."""

    def __init__(self, base: BaseModel, config: TrainConfig, plan: TrainPlan, work: Path, quiet: bool) -> None:
        from transformers import AutoTokenizer

        self.base, self.config, self.plan, self.work, self.quiet = base, config, plan, work, quiet
        self.interrupted = False
        self.tokenizer = AutoTokenizer.from_pretrained(base.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_format = ChatFormat.for_tokenizer(self.tokenizer, config.chat_format)
        self._trainer: Any = None
        self.train_recalls: list[Recall | None] | None = None  # each sample's memory block (training/recalls.py)
        self.eval_recalls: list[Recall | None] | None = None

    @property
    def likely_ids(self) -> list[int]:
        """The base model's most likely tokens at the owner's turns (for the llama.cpp shortlist); [] for
        vocabularies small enough to keep whole."""
        marginal = self._trainer.owner_marginal if self._trainer is not None else None
        if marginal is None or marginal.numel() < SAMPLED_VOCABULARY_MIN:
            return []
        return sorted(marginal.topk(min(LIKELY_TOKENS, marginal.numel())).indices.tolist())

    def trainer(self, train_samples: list, eval_samples: list) -> Any:
        import datasets

        datasets.disable_progress_bars()  # tokenizing and packing take a second; the training bar is ours
        # transformers 5 renames gradient_checkpointing; TRL still passes the old name. Nothing for users to act on.
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        from peft import LoraConfig
        from transformers import PrinterCallback
        from trl import SFTConfig

        from llmclone.training.loss import CloneTrainer

        config, plan = self.config, self.plan
        train_set = tokenized(train_samples, self.tokenizer, self.chat_format, config.max_length, self.train_recalls)
        eval_set = (tokenized(eval_samples, self.tokenizer, self.chat_format, config.max_length, self.eval_recalls)
                    if eval_samples else None)
        self.final_eval_set = eval_set
        if eval_set is not None:
            periodic = min(plan.periodic_eval_samples or len(eval_set), len(eval_set))
            eval_set = eval_set.select(evenly_spaced(list(range(len(eval_set))), periodic))
            self.evaluation = {"every_steps": config.eval_steps, "periodic_samples": periodic,
                               "final_samples": len(self.final_eval_set)}
            if not self.quiet:
                print(f"evaluating every {config.eval_steps} steps on {periodic} of the {len(self.final_eval_set)} "
                      "held-out samples, and on all of them at the end", flush=True)
        else:
            self.evaluation = {}
        if len(train_set) == 0:
            raise UserError("no training sample has an owner turn left after truncation; raise max_length.")
        self.token_ids = owner_tokens(train_set, owner_only=False).tolist()  # the llama.cpp engine's shortlist
        model = load_base_model(self.base, config, plan)
        vocab_size = model.config.get_text_config().vocab_size
        checkpointing, offload, sharded = plan.checkpointing, plan.offload, plan.sharding == "fsdp"
        args = SFTConfig(
            output_dir=str(self.work / "checkpoints"),
            per_device_train_batch_size=1,
            per_device_eval_batch_size=1,
            gradient_accumulation_steps=config.gradient_accumulation,
            max_length=plan.batch_tokens,
            packing=True,
            packing_strategy="bfd",
            padding_free=True,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler,
            warmup_steps=config.warmup_ratio,
            weight_decay=config.weight_decay,
            optim=plan.optimizer,
            bf16=plan.precision == "bf16",
            fp16=plan.precision == "fp16",
            use_cpu=not plan.cuda and plan.precision == "bf16",  # transformers asks for it before bf16 on a CPU
            # offloaded: switched on below; sharded: FSDP's own (fsdp_config)
            gradient_checkpointing=bool(checkpointing) and not offload and not sharded,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing and not offload else None,
            fsdp="full_shard" if sharded else "",
            fsdp_config=_fsdp_config(model, bool(checkpointing)) if sharded else None,
            eval_strategy="steps" if eval_set is not None else "no",
            eval_on_start=eval_set is not None,  # the base model's loss: where the curve starts
            eval_steps=config.eval_steps,
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=2,
            logging_steps=config.logging_steps,
            seed=config.seed,
            data_seed=config.seed,
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=plan.cuda,
            ddp_find_unused_parameters=False,
        )
        if args.n_gpu > 1 and args.world_size == 1:
            # One process seeing several GPUs would get nn.DataParallel, which TRL refuses (and which is slow).
            print(f"{args.n_gpu} GPUs are visible to one process: training on the first. To use them all: "
                  f"accelerate launch --num_processes {args.n_gpu} -m llmclone train ...", flush=True)
            args._n_gpu = 1
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, task_type="CAUSAL_LM",
        )
        from llmclone.training.callbacks import CtrlCStop, MetricsFile, ProgressBar

        callbacks = [MetricsFile(self.work / "metrics.jsonl"), CtrlCStop(self)]
        if not self.quiet:
            callbacks.append(ProgressBar())
        try:
            self._trainer = CloneTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                       processing_class=self.tokenizer, peft_config=lora, callbacks=callbacks)
            self._trainer.remove_callback(PrinterCallback)  # our bar and metrics.jsonl report instead
        except ValueError as err:
            if "target modules" in str(err).lower():
                raise UserError(f"target_modules {config.target_modules} do not exist in this model; use names of "
                                "its linear layers or 'all-linear'.") from None
            raise
        if plan.loss_vocabulary == "sampled":  # uniform until the first micro-batch gives the base model's marginal
            from llmclone.training.loss import SampledVocabulary

            self._trainer.sampled_vocabulary = SampledVocabulary(owner_tokens(train_set), vocab_size)
        self._trainer.wants_marginal = plan.record_marginal
        self._trainer.chunked_loss = plan.chunked_loss
        _trained_in_fp32(self._trainer.model)  # an fp16 grad scaler unscales fp32 gradients only
        if plan.fold_dropout:
            from llmclone.training.lora_dropout import fold_dropout

            fold_dropout(self._trainer.model, plan.cpu_masks)  # before DDP wraps it: less saved for backward
        if offload:
            from llmclone.training.offload import Offloader, enable

            enable(self._trainer.model, Offloader())
        if plan.kernels == "liger":
            from llmclone.models import fused_kernels

            fused_kernels.apply(self._trainer.model)
        return self._trainer


def _fsdp_config(model: Any, checkpointing: bool) -> dict[str, Any]:
    """FSDP2 over the decoder layers (each its own shard group), activation checkpointing by FSDP, and
    checkpoints saved sharded (each process its part) so a resume needs the same number of processes."""
    return {"version": 2, "transformer_layer_cls_to_wrap": list(model._no_split_modules or []),
            "activation_checkpointing": checkpointing, "state_dict_type": "SHARDED_STATE_DICT",
            "reshard_after_forward": True}


def load_base_model(base: BaseModel, config: TrainConfig, plan: TrainPlan) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from llmclone.training import attention

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision, torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype}
    kwargs["attn_implementation"] = (attention.register(plan.varlen_kernel) if plan.attention == "varlen"
                                     else plan.attention)
    if config.quantize == "4bit":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise UserError("--quantize 4bit needs bitsandbytes; run: pip install 'llmclone[quantize]'.") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
            # FSDP shards tensors of one dtype: the packed 4-bit values are stored in it (FSDP + QLoRA)
            bnb_4bit_quant_storage=kwargs["dtype"] if plan.sharding == "fsdp" else torch.uint8,
        )
        if plan.cuda and plan.sharding != "fsdp":  # sharded: accelerate places each process's part
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load the base model from {base.path} ({err}); check --model.") from None
    # Frozen, and left in the loaded dtype: peft's prepare_model_for_kbit_training would cast the embeddings,
    # output layer and norms of a bf16 model to fp32 (~1 GiB more on a 7B model) for no gain with frozen weights.
    for param in model.parameters():
        param.requires_grad = False
    if config.quantize == "4bit" and not plan.cuda:
        _keep_4bit_layers_trainable(model)
    model.config.use_cache = False
    return model


def _trained_in_fp32(model: Any) -> None:
    """Every trained tensor in fp32, whatever dtype the frozen weights have: under fp16 mixed precision the
    grad scaler refuses bf16/fp16 gradients ("_amp_foreach_non_finite_check_and_unscale_cuda" not implemented),
    and 16-bit updates of small LoRA steps would round away."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def _keep_4bit_layers_trainable(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer for its bf16 inference kernel at the
    first no-grad forward (our evaluation at the start of training), and the repacked layer then passes no
    gradient to its input in training (its input's grad is None: benchmarks/NOTES.md), so the LoRA layers below it
    would train on a cut graph; it also fails on layers narrower than the 64-value quantization block."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _adapter_state(model: Any) -> dict[str, Any]:
    """The trained (LoRA) tensors, whole: under FSDP each process holds a shard of each, and gathering them is a
    collective every process joins. Only the adapters: the base weights are not part of a clone."""
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
            for name, p in model.named_parameters() if p.requires_grad}


def _latest_checkpoint(work: Path) -> str | None:
    found = sorted((work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(found[-1]) if found else None


def _config_key(config: TrainConfig, stats: dict[str, Any]) -> str:
    """What a resume must match: every setting except how long to train, and the data."""
    settings = config.model_dump(exclude={"epochs", "max_steps", "eval_steps", "save_steps", "logging_steps",
                                            "periodic_eval_samples"})
    blob = json.dumps([settings, stats.get("dataset_digest")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _manifest(base: BaseModel, session: TrainingSession, stats: dict[str, Any], dataset_dir: Path,
              config: TrainConfig, trainer: Any, final_eval: dict[str, float], seconds: float) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": base.to_json(),
        "chat_format": session.chat_format.to_json(),
        "owner": stats.get("owner", {}),
        "dataset": {
            "name": dataset_dir.name,
            "digest": stats.get("dataset_digest"),
            "samples": stats.get("samples"),
            "tokens_estimated": stats.get("tokens_estimated"),
        },
        "training": config.model_dump(),  # as given ("auto" included); what ran is the plan
        "plan": session.plan.to_json(),
        "metrics": {
            "steps": trainer.state.global_step,
            # the last logged loss; a run shorter than the logging interval has only the trainer's summary
            "train_loss": history[-1]["loss"] if history else next(
                (h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None),
            "eval_loss": final_eval.get("final_eval_loss"),  # on all evaluation["final_samples"]
            "train_tokens": int(max((h.get("num_tokens", 0) for h in history), default=0)) or None,
            "seconds": round(seconds, 1),
        },
        "evaluation": session.evaluation,
        "memory": _memory_record(session.work, config),
        "versions": library_versions(),
    }


def _memory_record(work: Path, config: TrainConfig) -> dict[str, Any] | None:
    """What clone.json says of the memory: how it was recalled in training (replies recall the same way)."""
    if not config.memory:
        return None
    meta = json.loads((work / MEMORY / "memory.json").read_text())
    return {"trained": True, "exchanges": meta["exchanges"], "chats": meta["chats"],
            **dataclasses.asdict(recall_settings(config))}


def plot_losses(metrics: Path, out: Path) -> None:
    """loss.png: training and evaluation loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    final = [(r["step"], r["final_eval_loss"]) for r in rows if "final_eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (owner tokens)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss (sample of the held-out future)")
    if final:
        ax.plot(*zip(*final, strict=True), "D", color="C3", label="final eval loss (all of the held-out future)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("LLMClone training")
    ax.grid(alpha=0.3)
    if train or evals or final:
        ax.legend()
    fig.tight_layout()
    with private_umask():
        fig.savefig(out)
    plt.close(fig)


class _CtrlC:
    """Ctrl-C asks the trainer to save and stop at the end of the current step (a second one aborts)."""

    def __init__(self, session: TrainingSession) -> None:
        self.session = session

    def __enter__(self) -> None:
        self.previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self.session.interrupted:
                raise KeyboardInterrupt
            self.session.interrupted = True
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)...", flush=True)

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
