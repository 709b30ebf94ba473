"""The recipe: one YAML file, validated by this pydantic schema (the single source of truth for options)."""
from __future__ import annotations


import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeser.errors import InputError, RecipeError  # noqa: F401  (RecipeError: the older name, still importable)
from edgeser.formats import DEFAULTS, GATED_DEFAULT, NAMES

ARTIFACTS = NAMES  # every format the registry knows (edgeser/formats.py)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v, info):
        """pydantic would read `epochs: true` (or YAML 1.1's `yes`) as 1: a number field takes numbers only."""
        if isinstance(v, bool):
            ann = cls.model_fields[info.field_name].annotation
            kinds = set(get_args(ann)) if get_origin(ann) in (Union, types.UnionType) else {ann}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"expected a number, got {str(v).lower()}")
        return v


class SynthData(_Section):
    """The built-in synthetic corpus (`edgeser data synth`), generated into RUN/data/synth."""
    seed: int = Field(0, description="seed of the synthetic speakers' voices and clips")
    clips_per_class: int = Field(160, ge=2, le=100_000, description="clips per class, spread round-robin over the "
                                 "speakers (at least n_speakers)")
    n_speakers: int = Field(10, ge=2, le=1000, description="number of synthetic speakers")
    clip_seconds: float = Field(2.0, gt=0.1, le=60, description="length of each generated clip, seconds")


class Generative(_Section):
    """A class-conditional WaveGAN (edgeser/data/wavegan.py), trained on the train split only, whose clips are
    appended to the train split for the minority classes (edgeser/data/oversample.py)."""
    enabled: bool = Field(False, description="train the WaveGAN and add its clips to the train split's minority "
                          "classes")
    max_seconds: float = Field(300.0, gt=0, le=86_400, description="bound on the WaveGAN's training time, seconds "
                               "(wall): it stops before a step that would end past it")
    steps: int = Field(2000, ge=1, le=1_000_000, description="most generator steps (one discriminator step each)")
    batch_size: int = Field(16, ge=1, le=1024, description="clips per WaveGAN batch (class-balanced)")
    lr: float = Field(2e-4, gt=0, le=1, description="Adam learning rate of the generator and discriminator")
    target: Literal["balance"] | float = Field("balance", description="clips per minority class after it: balance "
                                               "= the majority class's count; a ratio in (0, 1] = that fraction "
                                               "of it (a class already there gets none)")
    seed: int = Field(0, description="added to the recipe's seed: the WaveGAN's weights, batches and clips")

    @field_validator("target")
    @classmethod
    def _ratio(cls, v):
        if v != "balance" and not 0 < v <= 1:
            raise ValueError(f"a ratio in (0, 1] of the majority count, or balance; got {v}")
        return v


class Augment(_Section):
    """Training-time augmentation; each switch is independent."""
    freq_mask: bool = Field(False, description="mask 20 % of mel bands (student, on its log-mel)")
    time_stretch: bool = Field(False, description="+-15 % tempo, pitch kept")
    pitch_shift: bool = Field(False, description="+-2 semitones, tempo kept")
    noise: bool = Field(False, description="background noise at `snr_db`")
    snr_db: float = Field(10.0, ge=-20, le=60, description="signal-to-noise ratio of the `noise` augmentation, dB")
    noise_folder: Path | None = Field(None, description="WAVs of noise; generated babble when empty")
    smote: bool = Field(False, description="oversample minority classes in the student's feature (log-mel) space")
    p: float = Field(0.5, ge=0, le=1, description="probability of each waveform augmentation, per example")
    # student-side: the teacher's logits stay those of the unclipped view, so the students learn to decide as if
    # the clip had not clipped. Off by default: measured on the espeak varlen corpus (log-mel CNN teacher, 280
    # held-out clips), the FP32 student kept its decision at +6 dB (clipped at full scale) on 96.8 % of clips
    # without it, 97.1 % with 6 dB at p = 0.5 and 96.8 % with 10 dB at p = 1: no gain beyond run-to-run noise
    # (the teacher itself kept it on 97.5 %).
    clipping_db: float = Field(0.0, ge=0, le=40, description="students see each view with probability `p` "
                               "clipped as if played up to this many dB past its peak (the teacher's logits stay "
                               "those of the unclipped view); 0 = off")
    generative: Generative = Field(Generative(), description="WaveGAN clips for the minority classes of the "
                                   "train split")


class Data(_Section):
    """The corpus: exactly one of `manifest` (your own CSV) or `synth` (the built-in synthetic corpus)."""
    manifest: Path | None = Field(None, description="manifest CSV (path,label,speaker[,session,votes]; paths "
                                  "relative to the CSV); give this or `synth`")
    synth: SynthData | None = Field(None, description="the built-in synthetic corpus; give this or `manifest`")
    classes: list[str] | None = Field(None, description="the classes to keep, in this order (default: every label "
                                      "in the manifest, sorted)")
    label_map: dict[str, str] = Field(default_factory=dict, description="relabel rows, e.g. {excited: happy}; "
                                      "applied before `classes`")
    # Rows with annotator votes (the manifest's optional `votes` column, edgeser/data/votes.py): their label is
    # the majority of their votes in either mode (a tie that includes the row's own label goes to it, any other
    # tie to the tied class listed first in `classes`); evaluation always scores that label. soft: the teacher
    # and students also learn the vote distribution (KL divergence), each example weighted by the inverse
    # frequency of its majority class; rows without votes learn their one-hot label.
    labels: Literal["majority", "soft"] = Field("majority", description="rows with annotator votes (manifest "
                                                "`votes` column): majority = train on the majority label (ties: "
                                                "the row's own label, else the first in `classes`); soft = train "
                                                "on the vote distribution (KL divergence), class-balanced")
    fold: str | None = Field(None, description="leave-one-session-out: this manifest `session` is the test set")
    fold_of: tuple[int, int] | None = Field(None, description="speaker k-fold (`edgeser cv`): [k, N] makes the k-th "
                                            "of N speaker folds (from 1) the test set; speakers go to folds from "
                                            "`seed`, balanced by clip count")
    augment: Augment = Field(Augment(), description="training-time augmentation; each switch is independent")
    clip_seconds: float = Field(2.0, gt=0.1, le=60, description="clip length the models see, seconds: longer audio "
                                "is centre-cropped, shorter zero-padded")
    # training on the centred clip_seconds of each utterance threw away the rest of every longer one (a 4.2 s
    # mean on the varlen dev corpus against 2 s clips); random crops show the models all of it over the epochs
    train_crops: Literal["random", "centre"] = Field("random", description="training clips from utterances longer "
                                                     "than clip_seconds: random = a new random crop each epoch "
                                                     "(teacher) and per augmented KD view; centre = the centred crop")
    sample_rate: Literal[16000] = Field(16000, description="audio is resampled to this rate, Hz (16 kHz only)")
    val_speakers: float = Field(0.2, gt=0, lt=1, description="fraction of speakers held out for validation")
    test_speakers: float = Field(0.2, gt=0, lt=1, description="fraction of speakers held out for the test split "
                                 "(the held-out clips that verify scores)")
    seed: int = Field(0, description="seed of the speaker split")
    # Manifest rows must resolve (after `..` and symlinks) inside the corpus root: the manifest's folder, or
    # `root` when given (e.g. the SRC of `edgeser data import` when the manifest is written elsewhere). Only the
    # recipe widens this, never a file that travels with the manifest. allow_outside_root: rows may point
    # anywhere (only for a manifest you trust).
    root: Path | None = Field(None, description="the corpus root that manifest rows must resolve inside (default: "
                              "the manifest's folder)")
    allow_outside_root: bool = Field(False, description="manifest rows may point anywhere (only for a manifest you "
                                     "trust)")
    # the corpus is decoded once into the store and read from it a batch at a time (edgeser/data/store.py), so
    # memory does not grow with the corpus; objects are keyed by file content, so a changed file is the only
    # one decoded again, and a store shared by runs (or torchrun ranks) decodes each file once
    store: Path | None = Field(None, description="folder of the decoded-audio store (default: RUN/data/store); "
                               "may be shared by runs")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes that read training batches "
                         "from the store (0 = in the training process)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.manifest is None) == (self.synth is None):
            raise ValueError("give exactly one of data.manifest or data.synth (`--set data.manifest=FILE` replaces "
                             "the recipe's data.synth, and the reverse)")
        if self.val_speakers + self.test_speakers >= 0.9:
            raise ValueError("val_speakers + test_speakers must leave speakers to train on (< 0.9)")
        return self

    @model_validator(mode="after")
    def _fold_of(self):
        if self.fold_of is not None:
            k, n = self.fold_of
            if n < 2 or not 1 <= k <= n:
                raise ValueError(f"data.fold_of: [{k}, {n}] must be [k, N] with N >= 2 folds and 1 <= k <= N")
            if self.fold is not None:
                raise ValueError("give at most one of data.fold (a session) and data.fold_of (a speaker fold)")
        return self


class Train(_Section):
    epochs: int = Field(10, ge=0, le=10_000, description="training epochs; the weights of the best epoch on the "
                        "validation split are kept")
    lr: float = Field(3e-4, gt=0, le=10, description="AdamW learning rate (halved when validation UA stops "
                      "improving)")
    plateau_steps: int = Field(40, ge=0, le=1_000_000, description="the lr is halved when validation UA has not "
                               "improved for this many optimiser steps (at least 2 epochs)")
    batch_size: int = Field(32, ge=1, le=4096, description="clips per training batch (per process under torchrun)")
    weight_decay: float = Field(1e-2, ge=0, le=1, description="AdamW weight decay")
    # epochs count passes over the data, so a small corpus (126 train clips = 4 batches) trained for 60 steps
    # where the demo's 640 clips got 300: min_steps raises the epochs of a small corpus to this many steps
    min_steps: int = Field(0, ge=0, le=1_000_000, description="epochs are raised so that training takes at least "
                           "this many optimiser steps (small corpora); 0 = `epochs` as given")
    balanced: bool = Field(True, description="class-balanced label loss: each example weighted by the inverse "
                           "frequency of its class, so every class counts the same (UA, not WA)")


EXTERNAL = {"external_teacher": True}  # marks the Teacher fields that name an external teacher (EXTERNAL_TEACHERS)


class Teacher(Train):
    """SoundNet-8 transfer learning (defaults follow the article: AdamW, lr 3e-4, batch 32, ReduceLROnPlateau), or
    an external teacher that is only run: `onnx`, `torchscript`, or `module` with `checkpoint`."""
    # measured on the espeak small dev corpus (126 train clips per fold, bench/generalization.py): 15 epochs were
    # 60 steps; 300 steps (75 epochs) took the teacher from below the log-mel baseline to above it
    min_steps: int = Field(300, ge=0, le=1_000_000, description="epochs are raised so that training takes at least "
                           "this many optimiser steps (small corpora); 0 = `epochs` as given")
    checkpoint: Path | None = Field(None, description="an edgeser teacher (skips training); with `module`: that "
                                    "module's state_dict, read weights-only")
    # an external teacher (edgeser/models/external_teacher.py): not trained, only run for its logits. It takes
    # float32 audio (batch, samples) at `sample_rate`, any batch and length, and returns logits (batch, classes)
    # (the first output of a tuple, or the `logits` key of a dict); its columns are mapped onto data's classes
    onnx: Path | None = Field(None, description="an external teacher: an ONNX model, run with onnxruntime (CPU); "
                              "give at most one of onnx, torchscript, module", json_schema_extra=EXTERNAL)
    torchscript: Path | None = Field(None, description="an external teacher: a TorchScript file (torch.jit.save)",
                                     json_schema_extra=EXTERNAL)
    module: str | None = Field(None, description="an external teacher: 'package.module:factory', called with no "
                               "arguments for an nn.Module, its weights from `checkpoint` (a state_dict)",
                               json_schema_extra=EXTERNAL)
    classes: list[str] | None = Field(None, description="external teacher: its output classes in order (default: "
                                      "the model's metadata key `classes`); mapped onto data's classes by name")
    pretrained: Path | None = Field(None, description="SoundNet-8 weights: sound8.npy or a PyTorch port's "
                                    "state_dict")
    strategy: Literal["auto", "scratch", "last_layer", "full", "transfer_attention"] = Field(
        "auto", description="transfer strategy (edgeser/transfer.py); auto: transfer_attention when `pretrained` "
        "is given, else scratch")
    freeze_epochs: int = Field(2, ge=0, description="transfer_attention: epochs with the backbone frozen")
    unfreeze_every: int = Field(1, ge=1, description="transfer_attention: then one more block (top first) "
                                   "every N epochs")
    source_audio: Path | None = Field(None, description="source-domain WAVs for the MMD term")
    ce_weight: float = Field(0.7, ge=0, le=1, description="with source_audio: weight of the cross-entropy term")
    mmd_weight: float = Field(0.3, ge=0, le=1, description="with source_audio: weight of the MMD term between "
                              "source- and target-domain features (0 = cross-entropy only)")
    sample_rate: int = Field(16000, ge=4000, le=192_000, description="teacher input rate, Hz: SoundNet-8 takes "
                             "16000 or 22050 (its native rate; audio resampled inside); an external teacher any rate "
                             "(the 16 kHz audio is resampled for it)")
    width_mult: float = Field(1.0, gt=0, le=4, description="SoundNet-8 channel-width multiplier (1.0 with "
                              "pretrained weights)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the classifier's linear layer")

    @model_validator(mode="after")
    def _strategy(self):
        if self.strategy not in ("auto", "scratch") and self.pretrained is None and self.checkpoint is None:
            raise ValueError(f"strategy {self.strategy} needs teacher.pretrained (SoundNet-8 weights)")
        if self.pretrained is not None and self.width_mult != 1.0:
            raise ValueError("width_mult must be 1.0 with pretrained SoundNet-8 weights")
        return self

    @field_validator("module")
    @classmethod
    def _module(cls, v):
        mod, _, attr = (v or "").partition(":")
        names = mod.split(".") + [attr]
        if v is not None and not all(n.isidentifier() for n in names):
            raise ValueError(f"{v!r}: expected 'package.module:factory' (dotted module path, a colon, the name of a "
                             "function returning the nn.Module)")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v):
        if v is not None and (not v or len(set(v)) != len(v) or not all(c.strip() for c in v)):
            raise ValueError("the teacher's classes are distinct, non-empty names, one per output column")
        return v

    @model_validator(mode="after")
    def _external(self):
        given = [f for f in EXTERNAL_TEACHERS if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one external teacher: teacher.{' and teacher.'.join(given)} are set")
        if not given:
            if self.classes is not None:
                raise ValueError("teacher.classes names an external teacher's outputs: give teacher.onnx, "
                                 "teacher.torchscript or teacher.module")
            if self.sample_rate not in (16000, 22050):
                raise ValueError(f"teacher.sample_rate: SoundNet-8 takes 16000 or 22050 Hz, not {self.sample_rate}; "
                                 "any rate only with an external teacher (onnx, torchscript, module)")
            return self
        if given == ["module"] and self.checkpoint is None:
            raise ValueError("teacher.module needs teacher.checkpoint: the module's state_dict")
        if given != ["module"] and self.checkpoint is not None:
            raise ValueError(f"teacher.checkpoint is an edgeser teacher, or teacher.module's weights: not with "
                             f"teacher.{given[0]}")
        for f in ("pretrained", "source_audio"):
            if getattr(self, f) is not None:
                raise ValueError(f"teacher.{f} is for training SoundNet-8: not with teacher.{given[0]}")
        return self

    def external(self) -> str | None:
        """The external teacher's format (onnx, torchscript, module), or None: SoundNet-8."""
        return next((f for f in EXTERNAL_TEACHERS if getattr(self, f) is not None), None)

    def resolved_strategy(self) -> str:
        if self.strategy == "auto":
            return "transfer_attention" if self.pretrained is not None else "scratch"
        return self.strategy


# the external teachers' formats, in order: the Teacher fields marked EXTERNAL (recipe fields, spelled once; the
# torchscript artifact format is formats.py's)
EXTERNAL_TEACHERS = tuple(n for n, f in Teacher.model_fields.items() if (f.json_schema_extra or {}) == EXTERNAL)


# distill and the prune fine-tune: which epoch a student keeps (stages/distill.py teacher_fidelity)
StudentSelect = Literal["teacher_kl", "ua"]
SELECT_FIELD = Field("teacher_kl", description="the kept epoch: teacher_kl = the one closest to the teacher on the "
                     "validation clips (mean KL), ua = the best validation UA")


STUDENT_SIZES = {"xs": [32, 32, 48, 64], "s": [64, 64, 96, 128], "m": [96, 128, 160, 192]}


class Student(_Section):
    """The small student: a log-mel front-end inside the model, then Conv1d blocks and a linear head."""
    size: Literal["xs", "s", "m"] = Field("s", description="a preset of conv widths: xs 32-64, s 64-128, "
                                          "m 96-192 channels (STUDENT_SIZES)")
    channels: list[int] | None = Field(None, description="explicit widths override `size`")
    kernel_size: int = Field(3, ge=1, le=31, description="kernel size of every Conv1d block")
    n_mels: int = Field(40, ge=8, le=128, description="mel bands of the log-mel front-end")
    frame_ms: float = Field(50.0, gt=1, le=200, description="analysis frame length of the front-end, ms")
    hop_ms: float = Field(25.0, gt=1, le=200, description="hop between frames, ms (stream.hop_s must be a "
                          "multiple of it)")
    # log-mel dynamic range kept below each clip's peak. 40 dB matches what the INT8 DFT output can carry
    # (127 amplitude steps = 42 dB); measured on the demo: 80 dB loses 13 pt UA at QAT, 55 dB 5 pt, 40 dB none.
    top_db: float = Field(40.0, gt=0, le=200, description="log-mel dynamic range kept below each clip's peak, dB")
    n_freqs: int = Field(100, ge=8, le=1024, description="DTFT sample points on a mel-spaced grid; the INT8 DFT "
                         "conv (most of the student's MACs) scales with it")

    fmax_hz: float | None = Field(None, gt=0, le=24000, description="highest frequency of the mel bands and of "
                                  "the DTFT grid, Hz; null = half the sample rate")

    def frontend(self) -> dict:
        d = {"n_mels": self.n_mels, "frame_ms": self.frame_ms, "hop_ms": self.hop_ms, "top_db": self.top_db,
             "n_freqs": self.n_freqs}
        return d | ({"fmax_hz": self.fmax_hz} if self.fmax_hz is not None else {})

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if v is not None and (not v or any(c < 1 or c > 4096 for c in v)):
            raise ValueError("each channel count must be in 1..4096 and the list non-empty")
        return v

    def widths(self) -> list[int]:
        return self.channels or STUDENT_SIZES[self.size]


class Distill(Train):
    """Logit knowledge distillation from the teacher into the student (with optional feature hints)."""
    epochs: int = Field(20, ge=0, le=10_000, description="distillation epochs; the weights of the best epoch on "
                        "the validation split are kept")
    lr: float = Field(3e-3, gt=0, le=10, description="AdamW learning rate (halved when validation UA stops "
                      "improving)")
    temperature: float = Field(4.0, gt=0, le=100, description="KD softmax temperature T (the KL term is scaled by "
                               "T^2); prune and QAT use it too")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KD term, 1 - alpha on the labels; prune and "
                         "QAT (kd_from teacher) use it too")
    aug_views: int = Field(2, ge=0, le=32, description="augmented copies of the train set, teacher logits "
                           "computed once (raised to reach min_kd_rows)")
    min_kd_rows: int = Field(2000, ge=0, le=10_000_000, description="aug_views is raised (up to 32) until the KD "
                             "set, train clips x (1 + views), has at least this many rows: small corpora get "
                             "more augmented views; 0 = aug_views as given")
    # feature (hint) distillation: the student's pooled features regress the teacher's pooled features of
    # these trunk blocks (1 = conv1 ... 7 = conv7), weight `hint_weight`; empty = logit KD only
    hint_layers: list[int] = Field(default_factory=list, description="feature (hint) distillation from these "
                                   "teacher blocks (1 = conv1 ... 7 = conv7); empty = logit KD only")
    hint_weight: float = Field(0.5, ge=0, le=100, description="weight of the hint (feature) loss")
    # with 2-3 validation speakers (~40 clips) the best epoch by val UA hung on a clip or two: on one espeak small
    # fold distillation kept epoch 1 of 25 (val UA 0.47, tied later) and lost 17 pt to its teacher on the test
    # speakers. teacher_kl keeps the epoch closest to the teacher (mean KL over the validation utterances):
    # continuous, every clip's whole distribution counts, and it is what "keeps what the teacher knows" means.
    select: StudentSelect = SELECT_FIELD

    @field_validator("hint_layers")
    @classmethod
    def _hints(cls, v):
        if any(not 1 <= i <= 7 for i in v) or len(set(v)) != len(v):
            raise ValueError("hint layers are distinct SoundNet-8 blocks 1..7")
        return v


class Prune(Train):
    """Channel pruning of the student, then KD fine-tuning (Train's fields apply to the fine-tuning)."""
    enabled: bool = Field(True, description="false: the distilled student goes on unpruned")
    # ratio: remove `channel_ratio` of channels at once. macs / latency: remove `step_ratio` per step, with
    # `step_epochs` of KD fine-tuning between steps, until MACs per clip <= macs_budget, or the measured
    # onnxruntime INT8 latency (batch 1, 1 thread, calibrated but untrained Q/DQ) <= latency_ms.
    target: Literal["ratio", "macs", "latency"] = Field("ratio", description="ratio: remove `channel_ratio` at "
                                                        "once; macs / latency: prune in steps until the budget holds")
    channel_ratio: float = Field(0.5, ge=0, lt=1, description="target ratio: fraction of channels removed (0 = "
                                 "none)")
    macs_budget: int | None = Field(None, gt=0, description="target macs: prune until MACs per clip <= this")
    latency_ms: float | None = Field(None, gt=0, description="target latency: prune until the measured onnxruntime "
                                     "INT8 latency (p50, batch 1, 1 thread) <= this, ms")
    step_ratio: float = Field(0.15, gt=0, lt=1, description="macs / latency: fraction of channels removed per step")
    step_epochs: int = Field(1, ge=0, le=1000, description="macs / latency: epochs of KD fine-tuning between steps")
    max_steps: int = Field(12, ge=1, le=100, description="macs / latency: at most this many pruning steps")
    epochs: int = Field(5, ge=0, le=10_000, description="epochs of KD fine-tuning after pruning")
    lr: float = Field(1e-3, gt=0, le=10, description="AdamW learning rate of the KD fine-tuning")
    select: StudentSelect = SELECT_FIELD

    @model_validator(mode="after")
    def _target(self):
        needs = {"macs": "macs_budget", "latency": "latency_ms"}.get(self.target)  # the limit each target reads
        if needs is not None and getattr(self, needs) is None:
            raise ValueError(f"target {self.target} needs prune.{needs}")
        return self


class QAT(Train):
    """Quantisation-aware training to INT8 (BN folded, calibrated scales, KD loss)."""
    epochs: int = Field(4, ge=0, le=10_000, description="QAT epochs; the best epoch is kept (kd_from student: the "
                        "one closest to the FP32 student, by mean KL on validation clips)")
    # QAT fine-tunes a model that is already trained: a small lr and the FP32 student's own BN statistics keep
    # its decisions those of the FP32 student (measured on the demo, 640 clips: lr 3e-4 with BN updating for an
    # epoch agreed with FP32 on 98.0 % of clips, lr 1e-4 with BN frozen on 98.6 %; 99.1 % at 3x length)
    lr: float = Field(1e-4, gt=0, le=10, description="AdamW learning rate: small, so the INT8 model keeps the "
                      "FP32 student's decisions")
    calib_batches: int = Field(8, ge=1, le=10_000, description="train batches (of batch_size clips) that calibrate "
                               "the activation scales before QAT")
    freeze_observers_after: int = Field(2, ge=0, description="epochs with activation observers updating, then "
                                        "fixed")
    freeze_bn_after: int = Field(0, ge=0, description="epochs with (folded) BN statistics updating, then fixed")
    # KD targets: "student" = the FP32 student being quantised (its logits on the same views), so the INT8
    # model learns to make the FP32 model's decisions, which verify's agreement and robustness gates measure;
    # "teacher" = the teacher's cached logits, as distill and prune use. Measured on the demo: at 3x length
    # the QAT model agreed with its FP32 student on 96.9 % of held-out clips with "teacher" (see issue 11).
    kd_from: Literal["student", "teacher"] = Field("student", description="KD targets: the FP32 student being "
                                                   "quantised, or the teacher's cached logits")
    # the largest gain by which a quiet DFT output channel is scaled up to the loudest one's range before the
    # INT8 DFT's one output quantiser (1/gain^2 folded into its mel weights; QuantFrontend.equalise): one scale
    # for all bins left most DFT outputs below one int8 step (measured on the demo: the INT8 front-end alone
    # agreed with FP32 on 97.5 % of half-length clips). 1 switches it off.
    dft_equalise: float = Field(64.0, ge=1, le=4096, description="largest gain scaling a quiet DFT output channel "
                                "up to the loudest one's range before the INT8 quantiser; 1 = off")
    # a second, 4x finer output range for the INT8 DFT (QuantFrontend.two_range; 2x the DFT's MACs). Measured on
    # the espeak varlen corpus (bench/external_teacher.py runs, 280 held-out clips, the QAT models re-run with it):
    # INT8 agreement with the FP32 student at 0.5x / 1x / 3x rose from 97.9 / 97.9 / 96.8 % to 98.2 / 98.6 / 98.6 %
    # (ONNX transformer teacher) and from 98.6 / 97.9 / 97.1 % to 98.6 / 98.6 / 99.6 % (TorchScript CNN teacher)
    dft_fine_gain: float = Field(4.0, ge=1, le=64, description="gain of the INT8 DFT's second, finer output range "
                                 "(twice the DFT's MACs); 1 = one int8 range")
    # the INT8 DFT's output: int32 sums of int8 x int8 products, scaled to float with no output quantiser
    # (onnxruntime: u8 x s8 MatMulInteger; its output step, the two ranges and equalise are then moot), or
    # requantised to int8 (dft_fine_gain, dft_equalise), which every INT8-only runtime needs (TensorRT's rules,
    # QNN HTP, LiteRT, ExecuTorch). auto: int32 when every format in export.formats takes it (formats.Format.
    # int32_dft), else int8. Issue 17: measured in bench/compression.py and bench/generalization.py.
    dft_output: Literal["auto", "int32", "int8"] = Field("auto", description="the INT8 DFT's output: int32 sums "
                                                         "to float (onnxruntime, PyTorch) or requantised to "
                                                         "int8; auto = int32 when every export format takes it")
    # the quantiser after each Conv + ReLU: unsigned (zero point -128: 0..255 steps,
    # twice the resolution; onnxruntime drops the ReLU and fuses each block into one QLinearConv), or symmetric
    # (zero point 0), which TensorRT needs. auto: symmetric when export.formats has tensorrt, else unsigned.
    relu_quant: Literal["auto", "unsigned", "symmetric"] = Field("auto", description="the quantiser after each "
                                                                  "ReLU: unsigned (fuses in onnxruntime) or "
                                                                  "symmetric (TensorRT); auto = symmetric when "
                                                                  "export.formats has tensorrt")
    # kd_from student: weight of the KD term (1 - alpha on the labels): 1.0 = learn the FP32 model's decisions
    # only; and the shortest random crop of each batch, as a fraction of its length (short input included)
    # after QAT, each activation scale times the factor (0.6, 0.8, 1.25 or 1) that keeps the FP32 student's
    # softmax best on 128 calibration clips (quant/calibrate.search_scales; kd_from student)
    scale_search: bool = Field(True, description="kd_from student: after QAT, search each activation scale "
                               "(x 0.6, 0.8, 1.25 or 1) for the INT8 model closest to the FP32 student on 128 "
                               "calibration clips")
    alpha: float = Field(1.0, ge=0, le=1, description="kd_from student: weight of the KD term (1 - alpha on the "
                         "labels); 1.0 = the FP32 model's decisions only")
    crop_min: float = Field(0.5, gt=0, le=1, description="kd_from student: the shortest random crop of each batch, "
                            "as a fraction of its length")


class Export(_Section):
    """The artifacts to write into RUN/artifacts."""
    # qnn-htp needs a static-batch target (qualcomm-hexagon), so it is asked for by name, not by default
    formats: list[Literal[ARTIFACTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULTS),
        description="artifacts to export; qnn-htp needs a static-batch target (qualcomm-hexagon), so it is asked "
                    "for by name")
    opset: int = Field(18, ge=17, le=20, description="ONNX opset of the exported ONNX models")
    ptq_calib_clips: int = Field(128, ge=1, le=100_000, description="onnx-int8-ptq: train clips for MinMax "
                                 "calibration")


class Verify(_Section):
    """The gates every run is checked against (`edgeser compress`, `edgeser verify`): exit 1 when one fails."""
    max_ua_drop_pt: float | None = Field(3.0, ge=0, le=100, description="gate: largest UA drop of a gated artifact "
                                         "against the teacher, percentage points (null = off)")
    max_latency_ms: float | None = Field(None, gt=0, description="gate: largest p95 single-clip latency (1 thread) "
                                         "of a gated artifact, ms (null = off)")
    max_size_bytes: int | None = Field(None, gt=0, description="gate: largest size of a gated artifact, bytes "
                                       "(null = off)")
    min_cross_agreement: float = Field(0.98, ge=0, le=1, description="gate: least top-1 agreement between two "
                                       "verified artifacts of the same reference model (two runtimes of one "
                                       "model), on the held-out clips (report: agreement_matrix)")
    min_agreement: float = Field(0.95, ge=0, le=1, description="gate: least top-1 agreement of every verified "
                                 "artifact with its PyTorch reference")
    gate_artifacts: list[Literal[ARTIFACTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(GATED_DEFAULT),
        description="the artifacts that the min_ua, UA-drop, latency and size gates apply to")
    latency_runs: int = Field(50, ge=3, le=100_000, description="timed single-clip calls per artifact for its "
                              "latency")
    # Each gated artifact's UA must reach min_ua with 95 % confidence: the gate compares the LOWER end of the
    # UA's bootstrap interval on the held-out clips, so a near-chance model cannot pass on a lucky small split
    # (48.8 % UA on 17 clips has an interval reaching down to chance). None (default) = chance + 0.10, i.e.
    # 1/k + 0.10 for k classes (0.35 for 4 classes, 0.60 for 2): a margin that only a model that learned
    # something clears, without presuming what a good UA is for a given corpus. 0 switches the gate off.
    min_ua: float | None = Field(None, ge=0, le=1, description="gate: least lower end of a gated artifact's UA 95 % "
                                 "interval; null = chance + 0.10, 0 = off")
    # The robustness suite (edgeser/robustness.py): the held-out clips at gains -40..+6 dB, in noise, with a DC
    # offset, band-limited, and at 0.5x/1x/3x length. Each deployed artifact's worst gain case (agreement with
    # its own decisions at 0 dB and with the FP32 student on the same input) and worst length case (agreement
    # with the FP32 student) must reach min_robust_agreement. Noise cases are reported, not gated.
    robustness: bool = Field(True, description="run the robustness suite (gain, noise, DC offset, band limit, "
                             "length) on every deployed artifact")
    min_robust_agreement: float = Field(0.98, ge=0, le=1, description="gate: least agreement of each deployed "
                                        "artifact's worst gain case and worst length case")
    # qnn-htp runs on Qualcomm's HTP simulator here (about 0.5 s per 2 s clip): the suite's gated cases only,
    # on this many clips (classes in turn); every other artifact runs the whole suite on every held-out clip.
    # None (default) = every held-out clip. A smaller number is raised to 3 / (1 - min_robust_agreement) (150 at
    # 0.98), and the report says so: on 32 clips one near-tie clip is 3.1 %, so the gate measured sampling.
    simulated_clips: int | None = Field(None, ge=4, le=100_000, description="qnn-htp (simulated): the suite's gated "
                                        "cases on this many clips; null = every held-out clip")


class Stream(_Section):
    """`edgeser stream`: sliding windows over live PCM (flags override these)."""
    window_s: float | None = Field(None, gt=0.05, le=60, description="window length, s; default: "
                                   "data.clip_seconds, what the student saw")
    hop_s: float = Field(0.5, gt=0, le=60, description="window hop, s: a multiple of student.hop_ms, so windows "
                         "share cached frames")
    smoothing: Literal["ema", "median", "none"] = Field("ema", description="smoothing of the class probabilities "
                                                        "over windows")
    ema_alpha: float = Field(0.5, gt=0, le=1, description="ema: weight of the newest window")
    median_windows: int = Field(5, ge=1, le=1000, description="median: the running median covers this many windows")


class Training(_Section):
    """Where the teacher, distill, prune and QAT loops train (edgeser/device.py)."""
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when torch sees a GPU, else "
                                                   "the CPU (fp32, bit for bit the CPU-only results)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="CUDA mixed precision: auto = "
                                                               "bf16 where the GPU has it, else fp16 (with a "
                                                               "GradScaler); QAT always trains in fp32")


class Recipe(_Section):
    """An edgeser recipe: one YAML file from the corpus to the verified edge artifacts."""
    name: str = Field("run", description="also the default run folder, runs/<name>")
    seed: int = Field(0, description="the run's random seed (each stage derives its own from it)")
    target: str = Field("cpu", description="device profile: a name in edgeser/profiles/ (cpu, jetson-orin, apple-ane, "
                        "qualcomm-hexagon) or a profile .yaml file")
    data: Data = Field(description="the corpus: exactly one of `manifest` or `synth`, the speaker split, "
                       "augmentation")
    train: Training = Field(Training(), description="the training device and precision")
    teacher: Teacher = Field(Teacher(), description="the SoundNet-8 teacher, transferred to speech emotion")
    student: Student = Field(Student(), description="the small log-mel student")
    distill: Distill = Field(Distill(), description="knowledge distillation from the teacher into the student")
    prune: Prune = Field(Prune(), description="channel pruning of the student, then KD fine-tuning")
    qat: QAT = Field(QAT(), description="quantisation-aware training to INT8")
    export: Export = Field(Export(), description="the artifacts to export")
    verify: Verify = Field(Verify(), description="the gates every run must pass")
    stream: Stream = Field(Stream(), description="`edgeser stream` settings (its flags override these)")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not v or len(v) > 100 or v.startswith((".", "-")) or any(c in "/\\" or ord(c) < 32 for c in v):
            raise ValueError(f"{v!r}: a run name is one folder name, 1-100 characters without '/', '\\' or control "
                             "characters, not starting with '.' or '-' (it names the folder runs/<name>)")
        return v

    @model_validator(mode="after")
    def _stream_hop(self):
        frames = self.stream.hop_s * 1000 / self.student.hop_ms
        if abs(frames - round(frames)) > 1e-6 or round(frames) < 1:
            raise ValueError(f"stream.hop_s: {self.stream.hop_s} s must be a multiple of student.hop_ms "
                             f"({self.student.hop_ms} ms), so overlapping windows share cached frames")
        return self

    @model_validator(mode="after")
    def _qat_choices_for_formats(self):
        """qat.relu_quant unsigned and qat.dft_output int32, asked for by name, against the formats that cannot
        run them (auto picks what every format runs: stages.common.qat_layout)."""
        from edgeser.formats import int8_dft_only, zero_points_zero

        bad = []
        if self.qat.relu_quant == "unsigned" and zero_points_zero(self.export.formats):
            bad.append(("qat.relu_quant: unsigned gives zero points of -128, which {} rejects (its zero points "
                        "must be 0): use auto or symmetric", zero_points_zero(self.export.formats)))
        if self.qat.dft_output == "int32" and int8_dft_only(self.export.formats):
            bad.append(("qat.dft_output: int32 leaves the INT8 DFT's output unquantised, which {} cannot run (it "
                        "wants int8 between every layer): use auto or int8", int8_dft_only(self.export.formats)))
        if bad:
            raise ValueError("; ".join(f"{text.format(', '.join(formats))}, or drop it from export.formats"
                                       for text, formats in bad))
        return self

    @model_validator(mode="after")
    def _fmax_below_nyquist(self):
        if self.student.fmax_hz is not None and self.student.fmax_hz > self.data.sample_rate / 2:
            raise ValueError(f"student.fmax_hz: {self.student.fmax_hz} Hz is above half the sample rate "
                             f"({self.data.sample_rate / 2:g} Hz)")
        return self


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if cur.get(k) is None:
            cur[k] = {}
        if not isinstance(cur[k], dict):
            raise InputError(f"--set {dotted}: '{k}' is not a section")
        cur = cur[k]
    cur[keys[-1]] = value


def parse_overrides(sets: list[str]) -> list[tuple[str, Any]]:
    out = []
    for s in sets or []:
        if "=" not in s or not s.split("=", 1)[0].strip():
            raise InputError(f"--set {s!r}: expected KEY=VALUE, e.g. distill.epochs=3")
        k, v = s.split("=", 1)
        if any(not part.strip() for part in k.split(".")):
            raise InputError(f"--set {s!r}: empty part in the key {k.strip()!r}, e.g. distill.epochs=3")
        try:
            out.append((k.strip(), _safe_load(v)))
        except yaml.YAMLError as e:
            raise InputError(f"--set {k}: value is not valid YAML: {e}") from None
        except RecursionError:
            raise InputError(f"--set {k}: value is nested too deeply") from None
    return out


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no python/* tags: nothing is constructed or run) that also refuses duplicate keys,
    which PyYAML would otherwise resolve silently to the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: let SafeLoader report it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str):
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - safe: _StrictLoader is a yaml.SafeLoader subclass


def _format_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.replace("Value error, ", "")
        msg = msg.replace("Input should be greater than", "must be >").replace("Input should be less than", "must be <")
        lines.append(f"{loc}: {msg}" if err["loc"] else msg)  # a cross-field check names its fields itself
    return "invalid recipe:\n  " + "\n  ".join(lines)


# One data source replaces the other: `--set data.manifest=FILE` on a recipe with data.synth (or the reverse)
# means "use this instead", unless the same overrides also set the other one.
DATA_SOURCES = ("data.manifest", "data.synth")


def validate(raw: dict, sets: list[str] | None = None) -> Recipe:
    """Apply `--set KEY=VALUE` overrides to a raw recipe mapping and validate it (InputError names the field)."""
    overrides = parse_overrides(sets or [])
    keys = {k for k, _ in overrides}
    for k, v in overrides:
        _set_path(raw, k, v)
    for mine, other in (DATA_SOURCES, DATA_SOURCES[::-1]):
        data = raw.get("data")
        if mine in keys and other not in keys and isinstance(data, dict) and dict(overrides)[mine] is not None:
            data.pop(other.split(".")[1], None)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise InputError(_format_error(e)) from None


def _is(path: Path, kind: str) -> bool:
    """path.is_file() / is_dir(), False (not an exception) for a name too long or otherwise unusable."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


# Path fields: (dotted name, section getter, attribute, file or folder)
PATH_FIELDS = (("data.manifest", lambda r: r.data, "manifest", "file"),
               ("teacher.checkpoint", lambda r: r.teacher, "checkpoint", "file"),
               *((f"teacher.{f}", lambda r: r.teacher, f, "file") for f in EXTERNAL_TEACHERS if f != "module"),
               ("teacher.pretrained", lambda r: r.teacher, "pretrained", "file"),
               ("teacher.source_audio", lambda r: r.teacher, "source_audio", "folder"),
               ("data.augment.noise_folder", lambda r: r.data.augment, "noise_folder", "folder"),
               ("data.root", lambda r: r.data, "root", "folder"),
               ("data.store", lambda r: r.data, "store", "writable"))


def _writable_folder(path: Path) -> str | None:
    """Why `path` cannot be (or become) a folder this process writes in, or None: checked without writing."""
    import os

    if path.exists():
        return None if path.is_dir() and os.access(path, os.W_OK | os.X_OK) else (
            "is a file, expected a folder" if not path.is_dir() else "folder is not writable")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be created: {parent} is not writable"


def load_recipe(path: str | Path, sets: list[str] | None = None, cwd: Path | None = None) -> Recipe:
    """Read, override and validate a recipe. A relative path written in the recipe file resolves against the
    recipe's folder; one given with `--set` resolves against the working folder (cwd), as a shell path does."""
    path = Path(path)
    if not _is(path, "file"):
        raise InputError(f"recipe file not found: {path}")
    try:
        raw = _safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    except RecursionError:
        raise InputError(f"{path}: not a usable recipe: nested too deeply") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the recipe: {e.strerror or e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the recipe must be a mapping of sections, got {type(raw).__name__}")
    recipe = validate(raw, sets)
    from_sets = {k for k, _ in parse_overrides(sets or [])}
    for field, section_of, attr, kind in PATH_FIELDS:
        section = section_of(recipe)
        value = getattr(section, attr)
        if value is None:
            continue
        via_set = field in from_sets
        where = "the working folder (--set)" if via_set else f"the recipe's folder {path.resolve().parent}"
        if not value.is_absolute():
            value = ((cwd or Path.cwd()) if via_set else path.resolve().parent) / value
            setattr(section, attr, value)
        if kind == "writable":
            why = _writable_folder(value)
            if why:
                raise InputError(f"{field}: {why}: {value} (a relative path resolves against {where})")
            continue
        if not _is(value, kind):
            other = "folder" if kind == "file" else "file"
            found = f"is a {other}, expected a {kind}" if _is(value, other) else f"{kind} not found"
            raise InputError(f"{field}: {found}: {value} (a relative path resolves against {where})")
    from edgeser.targets import load_target

    load_target(recipe.target)  # raises InputError naming `target`
    return recipe
