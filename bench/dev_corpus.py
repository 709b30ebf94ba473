"""Development corpora for speech emotion recognition from a real synthesiser (espeak-ng), plus a baseline.

    .venv/bin/python bench/dev_corpus.py --out /work/corpora/small --preset small [--seed 0] [--force]
    .venv/bin/python bench/dev_corpus.py --baseline /work/corpora/small/manifest.csv [--folds 5]

Generation writes DIR/*.wav (16 kHz mono, PCM16) and DIR/manifest.csv (path,label,speaker,session; paths relative
to the CSV, as edgeser.data.manifest expects). It writes into a temporary sibling folder and renames it to DIR at
the end (an existing DIR is refused unless --force). Progress goes to stderr; stdout gets one JSON line (counts per
class/speaker, duration stats, generation time). Needs the `espeak-ng` binary (apt-get install espeak-ng).

Method (see bench/DEV_CORPORA.md)
------
Classes neutral, happy, sad, angry. Each speaker = an espeak-ng voice (language + variant), base pitch (-p), base
rate (-s), base pitch range, a microphone tilt, a recording level (-35..-10 dBFS active-speech RMS), a room
(synthetic exponentially decaying noise impulse response, RT60 0.2-0.8 s, direct-to-reverberant ratio) and, per
session, a background noise (white / pink / babble made of other synthesized voices) whose floor sits a speaker
SNR (10-25 dB) below the speaker's level, so louder (angry) clips get a better SNR; clip SNR kept within 5-30 dB.
Emotion = SSML <prosody pitch range rate> + pauses (<break>) + a level offset + a spectral tilt (vocal effort),
each scaled by the speaker's expressiveness (speaker-wide 0.4..1.2 times per emotion 0.5..1.3, plus the speaker's
own pitch/rate/level habits; some speakers barely express) and jittered per clip. Texts are short neutral sentences in 5 languages, drawn independently of
the label, so the words carry no emotion.

Deterministic for a given --seed and preset (numpy Generators seeded from (seed, preset, speaker, clip); espeak-ng
is deterministic). Different presets draw different speakers, rooms and noises even at the same seed.

The baseline: log-mel (40 bands, 25 ms / 10 ms) mean and std per band -> 80 features, z-scored on the training
folds, multinomial logistic regression (L2, L-BFGS; numpy/scipy), 5-fold leave-speakers-out grouped CV. Prints the
unweighted accuracy (UA, mean per-class recall) per fold, mean and 95 % CI (t, df = folds - 1), then one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

SR = 16000
ESPEAK_SR = 22050
CLASSES = ("neutral", "happy", "sad", "angry")

# ---------------------------------------------------------------------------------------------------- texts
# Short, emotionally neutral sentences. "short" items (1-3 words) only serve the varlen preset.
TEXTS = {
    "en": {
        "short": ["Yes.", "Not now.", "Okay then.", "Come in.", "Over there.", "Good morning.", "Thank you.",
                  "On Tuesday."],
        "sent": ["The train leaves at nine.", "I left the keys on the table.", "Kids are talking by the door.",
                 "Dogs are sitting by the door.", "The meeting starts after lunch.", "Please close the window.",
                 "We moved the boxes to the garage.", "The shop opens at eight tomorrow.",
                 "She parked the car near the station.", "The report is on your desk.",
                 "He bought bread and milk this morning.", "The bus was full again today."],
    },
    "de": {
        "short": ["Ja.", "Nicht jetzt.", "Na gut.", "Komm rein.", "Da drüben.", "Guten Morgen.", "Danke schön.",
                  "Am Dienstag."],
        "sent": ["Der Zug fährt um neun Uhr ab.", "Ich habe die Schlüssel auf den Tisch gelegt.",
                 "Die Kinder stehen an der Tür.", "Das Treffen beginnt nach dem Mittagessen.",
                 "Bitte mach das Fenster zu.", "Wir haben die Kisten in die Garage gebracht.",
                 "Der Laden öffnet morgen um acht.", "Sie hat das Auto am Bahnhof geparkt.",
                 "Der Bericht liegt auf deinem Schreibtisch.", "Er hat heute Morgen Brot und Milch gekauft.",
                 "Der Bus war heute wieder voll.", "Das Wetter bleibt die ganze Woche gleich."],
    },
    "fr": {
        "short": ["Oui.", "Pas maintenant.", "Bon, d'accord.", "Entrez.", "Là-bas.", "Bonjour.", "Merci bien.",
                  "Mardi prochain."],
        "sent": ["Le train part à neuf heures.", "J'ai laissé les clés sur la table.",
                 "Les enfants parlent près de la porte.", "La réunion commence après le déjeuner.",
                 "Ferme la fenêtre, s'il te plaît.", "Nous avons mis les cartons dans le garage.",
                 "Le magasin ouvre demain à huit heures.", "Elle a garé la voiture près de la gare.",
                 "Le rapport est sur ton bureau.", "Il a acheté du pain et du lait ce matin.",
                 "Le bus était encore plein aujourd'hui.", "Le temps reste le même toute la semaine."],
    },
    "es": {
        "short": ["Sí.", "Ahora no.", "Bueno, vale.", "Pasa.", "Allí.", "Buenos días.", "Muchas gracias.",
                  "El martes."],
        "sent": ["El tren sale a las nueve.", "Dejé las llaves en la mesa.", "Los niños hablan junto a la puerta.",
                 "La reunión empieza después de comer.", "Por favor, cierra la ventana.",
                 "Llevamos las cajas al garaje.", "La tienda abre mañana a las ocho.",
                 "Aparcó el coche cerca de la estación.", "El informe está en tu escritorio.",
                 "Compró pan y leche esta mañana.", "El autobús iba lleno otra vez hoy.",
                 "El tiempo sigue igual toda la semana."],
    },
    "it": {
        "short": ["Sì.", "Non adesso.", "Va bene.", "Entra pure.", "Laggiù.", "Buongiorno.", "Grazie mille.",
                  "Martedì."],
        "sent": ["Il treno parte alle nove.", "Ho lasciato le chiavi sul tavolo.",
                 "I bambini parlano vicino alla porta.", "La riunione comincia dopo pranzo.",
                 "Chiudi la finestra, per favore.", "Abbiamo portato le scatole in garage.",
                 "Il negozio apre domani alle otto.", "Ha parcheggiato la macchina vicino alla stazione.",
                 "Il rapporto è sulla tua scrivania.", "Ha comprato pane e latte stamattina.",
                 "L'autobus era di nuovo pieno oggi.", "Il tempo resta uguale tutta la settimana."],
    },
}

# espeak-ng voices per language (language code as espeak-ng names it, the text language it reads). Speakers
# cycle over the languages; English speakers cycle over the accents.
LANGS = ["en", "de", "fr", "es", "it"]
ESPEAK_LANG = {"en": ["en-us", "en-gb", "en-gb-scotland", "en-029"], "de": ["de"], "fr": ["fr-fr"],
               "es": ["es"], "it": ["it"]}
LANG_VOICES = [(v, lang) for lang in LANGS for v in ESPEAK_LANG[lang]]
MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt3", "edward", "paul", "john"]
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4", "f5", "klatt4", "anika", "belinda", "linda", "steph", "Andrea",
                   "Annie", "Alicia", "aunty"]
# (espeak-ng silently falls back to the plain voice for an unknown variant; these were checked to differ)

# Emotion targets at full expressiveness: pitch (relative factor), range (factor), rate (factor), level (dB),
# spectral tilt above 1 kHz (dB), pause factor.
EMOTIONS = {
    "neutral": dict(pitch=1.00, range=1.00, rate=1.00, level=0.0, tilt=0.0, pause=1.0),
    "happy":   dict(pitch=1.35, range=2.00, rate=1.12, level=4.0, tilt=4.0, pause=0.9),
    "sad":     dict(pitch=0.82, range=0.40, rate=0.78, level=-8.0, tilt=-7.0, pause=1.8),
    "angry":   dict(pitch=1.12, range=1.50, rate=1.18, level=10.0, tilt=12.0, pause=0.7),
}


@dataclass(frozen=True)
class Preset:
    speakers: int
    per_class: dict  # label -> clips per speaker
    sessions: int
    varlen: bool = False
    intensities: tuple = (1.0,)  # non-neutral clips cycle over these (RAVDESS: normal, strong)


PRESETS = {
    "small": Preset(12, {"neutral": 6, "happy": 5, "sad": 5, "angry": 5}, sessions=2),
    "ravdess": Preset(24, {"neutral": 10, "happy": 16, "sad": 16, "angry": 16}, sessions=2,
                      intensities=(0.7, 1.3)),
    "varlen": Preset(24, {"neutral": 10, "happy": 10, "sad": 10, "angry": 10}, sessions=2, varlen=True),
}


@dataclass
class Speaker:
    name: str
    voice: str
    lang: str
    pitch: int
    rate: int
    range_f: float
    mic_tilt: float
    level_dbfs: float
    rt60: float
    drr_db: float
    snr_db: float
    noise: list  # per session: "white" | "pink" | "babble"
    express: dict = field(default_factory=dict)  # label -> dict of multipliers (0 = no expression)


# ---------------------------------------------------------------------------------------------------- synthesis
def espeak(ssml: str, voice: str, pitch: int, rate: int) -> np.ndarray:
    """espeak-ng -> float32 at 16 kHz."""
    r = subprocess.run(["espeak-ng", "-v", voice, "-m", "-p", str(pitch), "-s", str(rate), "-a", "100",
                        "--stdout", ssml], capture_output=True, check=False)
    b = r.stdout
    i = b.find(b"data")
    if r.returncode != 0 or i < 0:
        raise RuntimeError(f"espeak-ng failed for voice {voice}: {r.stderr.decode(errors='replace')[:300]}")
    x = np.frombuffer(b[i + 8:len(b) - ((len(b) - i - 8) % 2)], dtype="<i2").astype(np.float32) / 32768.0
    return signal.resample_poly(x, 320, 441).astype(np.float32)  # 22050 -> 16000


def xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def make_ssml(sentences: list[str], pitch_f: float, range_f: float, rate_f: float, pause_ms: list[int]) -> str:
    parts = []
    for k, s in enumerate(sentences):
        if k:
            parts.append(f'<break time="{pause_ms[k - 1]}ms"/>')
        parts.append(xml_escape(s))
    return (f'<speak><prosody pitch="{100 * (pitch_f - 1):+.0f}%" range="{100 * range_f:.0f}%" '
            f'rate="{100 * rate_f:.0f}%">{" ".join(parts)}</prosody></speak>')


def tilt(x: np.ndarray, db: float, fc: float = 1000.0) -> np.ndarray:
    """First-order shelf: the part above fc scaled by db."""
    b, a = signal.butter(1, fc / (SR / 2))
    low = signal.lfilter(b, a, x)
    return (low + 10 ** (db / 20) * (x - low)).astype(np.float32)


def room_ir(rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
    n = int(SR * min(1.2 * rt60, 1.0))
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)  # -60 dB at rt60
    b, a = signal.butter(1, 5000 / (SR / 2))  # air absorption, roughly
    tail = signal.lfilter(b, a, tail)
    pre = int(SR * rng.uniform(0.002, 0.010))
    tail[:pre] = 0
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail ** 2))  # energy of tail relative to direct path (1)
    tail[0] = 1.0
    return tail.astype(np.float32)


def active_rms(x: np.ndarray) -> float:
    """RMS over 20 ms frames within 40 dB of the loudest frame (speech, not the padding)."""
    f = int(0.02 * SR)
    n = len(x) // f
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2)) + 1e-12)
    e = np.mean(x[:n * f].reshape(n, f) ** 2, axis=1)
    keep = e > e.max() * 1e-4
    return float(np.sqrt(np.mean(e[keep])) + 1e-12)


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)


def make_babble(rng: np.random.Generator, seconds: float = 30.0, streams: int = 6) -> np.ndarray:
    """Several other synthesized talkers (not corpus speakers), neutral prosody, summed."""
    n = int(seconds * SR)
    out = np.zeros(n, np.float32)
    for _ in range(streams):
        lang_voice, lang = LANG_VOICES[rng.integers(len(LANG_VOICES))]
        var = (MALE_VARIANTS + FEMALE_VARIANTS)[rng.integers(len(MALE_VARIANTS) + len(FEMALE_VARIANTS))]
        texts = TEXTS[lang]["sent"]
        buf = []
        total = 0
        while total < n:
            order = rng.permutation(len(texts))[:6]
            x = espeak(make_ssml([texts[i] for i in order], 1.0, 1.0, 1.0, [300] * 5),
                       f"{lang_voice}+{var}", int(rng.integers(30, 70)), int(rng.integers(150, 190)))
            x /= active_rms(x)
            buf.append(x)
            total += len(x)
        stream = np.concatenate(buf)
        off = int(rng.integers(len(stream) - n + 1))
        out += stream[off:off + n]
    return out / active_rms(out)


# ---------------------------------------------------------------------------------------------------- speakers
def make_speakers(preset: Preset, seed: int) -> list[Speaker]:
    rng = np.random.default_rng([seed, 1, preset.speakers, sum(preset.per_class.values()), int(preset.varlen)])
    spk = []
    lang_order = rng.permutation(len(LANGS))
    males = list(rng.permutation(MALE_VARIANTS))
    females = list(rng.permutation(FEMALE_VARIANTS))
    for i in range(preset.speakers):
        lang = LANGS[lang_order[i % len(LANGS)]]
        accents = ESPEAK_LANG[lang]
        lang_voice = accents[(i // len(LANGS)) % len(accents)]
        female = i % 2 == 1
        var = (females if female else males)[(i // 2) % len(females if female else males)]
        # expressiveness: a speaker-wide factor (some barely express) times a per-emotion factor
        overall = float(rng.uniform(0.4, 1.2))
        express = {}
        for lab in CLASSES:
            if lab == "neutral":
                express[lab] = dict(k=0.0, pitch=0.0, rate=0.0, level=0.0)
            else:
                # per-emotion scale and idiosyncrasies: this speaker's own pitch/rate/level habit for the emotion
                express[lab] = dict(k=overall * float(rng.uniform(0.5, 1.3)),
                                    pitch=float(rng.normal(0, 0.07)), rate=float(rng.normal(0, 0.06)),
                                    level=float(rng.normal(0, 2.0)))
        noise = [str(rng.choice(["white", "pink", "babble", "babble"])) for _ in range(preset.sessions)]
        spk.append(Speaker(
            name=f"spk{i + 1:02d}_{lang_voice}_{'f' if female else 'm'}",
            voice=f"{lang_voice}+{var}", lang=lang,
            pitch=int(rng.integers(30, 71)), rate=int(rng.integers(135, 186)),
            range_f=float(rng.uniform(0.7, 1.3)), mic_tilt=float(rng.uniform(-2, 2)),
            level_dbfs=float(rng.uniform(-35, -10)), rt60=float(rng.uniform(0.2, 0.8)),
            drr_db=float(rng.uniform(-2, 10)), snr_db=float(rng.uniform(10, 25)),
            noise=noise, express=express))
    return spk


def clip_plan(preset: Preset, spk: Speaker, si: int, seed: int) -> list[tuple[str, int, float]]:
    """(label, session index, intensity) per clip of a speaker, in a seeded order."""
    rng = np.random.default_rng([seed, 2, si])
    plan = []
    for lab in CLASSES:
        for j in range(preset.per_class[lab]):
            inten = 1.0 if lab == "neutral" else preset.intensities[j % len(preset.intensities)]
            plan.append((lab, j % preset.sessions, inten))
    return [plan[k] for k in rng.permutation(len(plan))]


def pick_text(rng: np.random.Generator, lang: str, varlen: bool, rate_cps: float) -> tuple[list[str], float]:
    """Sentences for one clip; with varlen, enough text for a target length uniform in 1..8 s."""
    t = TEXTS[lang]
    if not varlen:  # one sentence that this speaker says within ~3 s at this rate (natural 1-4 s clips)
        fits = [s for s in t["sent"] if len(s) / rate_cps <= 3.0] or sorted(t["sent"], key=len)[:3]
        return [fits[rng.integers(len(fits))]], 0.0
    target = float(rng.uniform(1.0, 7.5))  # the pauses and lead/tail silence add some; 8 s is the hard cut
    if target < 1.8:
        return [t["short"][rng.integers(len(t["short"]))]], target
    pool = list(rng.permutation(t["sent"])) + list(rng.permutation(t["short"]))
    chosen, est = [], 0.6
    while pool and est < target:
        s = pool.pop(0) if est < target - 1.2 or not t["short"] else pool.pop()
        chosen.append(s)
        est += len(s) / rate_cps + 0.35
    return chosen, target


def render_clip(spk: Speaker, lab: str, sess: int, inten: float, preset: Preset, rng: np.random.Generator,
                babble: np.ndarray) -> np.ndarray:
    emo, ex = EMOTIONS[lab], spk.express[lab]
    k = ex["k"] * inten

    def toward(target: float) -> float:  # multiplicative factor scaled by expressiveness
        return float(target ** k)

    pitch_f = toward(emo["pitch"]) * (1 + ex["pitch"] * k) * float(np.exp(rng.normal(0, 0.06)))
    range_f = spk.range_f * toward(emo["range"]) * float(np.exp(rng.normal(0, 0.18)))
    rate_f = toward(emo["rate"]) * (1 + ex["rate"] * k) * float(np.exp(rng.normal(0, 0.06)))
    pause_f = toward(emo["pause"]) * float(np.exp(rng.normal(0, 0.25)))
    level_db = (emo["level"] + ex["level"]) * k + float(rng.normal(0, 2.0))
    tilt_db = spk.mic_tilt + emo["tilt"] * k + float(rng.normal(0, 1.0))

    rate_cps = 17.0 * spk.rate / 170 * rate_f  # characters per second, roughly (espeak-ng, measured)
    sentences, target = pick_text(rng, spk.lang, preset.varlen, rate_cps)
    pauses = [int(np.clip(rng.uniform(200, 600) * pause_f, 80, 1500)) for _ in sentences]
    x = espeak(make_ssml(sentences, pitch_f, range_f, rate_f, pauses), spk.voice, spk.pitch, spk.rate)

    # espeak-ng pads little silence; trim it and add our own lead/tail (longer when sad = pause_f)
    e = np.abs(x) > 1e-3
    if e.any():
        idx = np.flatnonzero(e)
        x = x[max(idx[0] - 160, 0):idx[-1] + 160]
    lead = int(SR * rng.uniform(0.1, 0.5) * min(pause_f, 2.0))
    tail = int(SR * rng.uniform(0.15, 0.5) * min(pause_f, 2.0))
    x = np.concatenate([np.zeros(lead, np.float32), tilt(x, tilt_db), np.zeros(tail, np.float32)])

    max_len = 8.0 if preset.varlen else 4.0
    if len(x) > max_len * SR:  # keep within the preset's range: cut with a 50 ms fade
        x = x[:int(max_len * SR)].copy()
        x[-800:] *= np.linspace(1, 0, 800, dtype=np.float32)
    if len(x) < SR:  # at least 1 s
        pad = SR - len(x)
        a = int(rng.integers(pad + 1))
        x = np.concatenate([np.zeros(a, np.float32), x, np.zeros(pad - a, np.float32)])

    # room: speaker's room, slightly different per session (position)
    room_rng = np.random.default_rng([hash_name(spk.name), sess])
    ir = room_ir(room_rng, spk.rt60 * float(room_rng.uniform(0.9, 1.1)), spk.drr_db + float(room_rng.normal(0, 1)))
    y = signal.fftconvolve(x, ir)[:len(x)].astype(np.float32)

    # level: speaker's recording level + emotion/clip offset (active-speech RMS)
    y *= 10 ** ((spk.level_dbfs + level_db) / 20) / active_rms(y)
    speech_rms = active_rms(y)

    kind = spk.noise[sess]
    n = len(y)
    if kind == "white":
        nz = rng.standard_normal(n).astype(np.float32)
    elif kind == "pink":
        nz = pink(rng, n)
    else:
        off = int(rng.integers(len(babble) - n))
        nz = babble[off:off + n].copy()
    # the noise floor belongs to the session (speaker level - speaker SNR, jittered), not to the voice: a louder
    # (angry) clip gets a better SNR, a quiet (sad) one a worse; the clip SNR is kept within 5..30 dB
    noise_db = spk.level_dbfs - spk.snr_db + float(rng.normal(0, 1.5))
    snr = float(np.clip(20 * np.log10(speech_rms) - noise_db, 5.0, 30.0))
    nz *= speech_rms / (np.sqrt(np.mean(nz ** 2)) + 1e-12) / 10 ** (snr / 20)
    y = y + nz
    peak = float(np.max(np.abs(y)))
    if peak > 0.9:  # a loud talker near full scale: soft limiter (some clipping, as in real recordings)
        y = (0.9 * np.tanh(y / 0.9)).astype(np.float32)
    return y.astype(np.float32)


def hash_name(s: str) -> int:
    """A stable (not PYTHONHASHSEED-dependent) hash."""
    h = 1469598103934665603
    for c in s.encode():
        h = ((h ^ c) * 1099511628211) % (1 << 63)
    return h


def generate(out: Path, preset_name: str, seed: int, force: bool) -> dict:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install -y espeak-ng")
    preset = PRESETS[preset_name]
    out = Path(out)
    if out.exists() and not force:
        sys.exit(f"{out} exists; pass --force to replace it")
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        speakers = make_speakers(preset, seed)
        print(f"[dev_corpus] preset {preset_name}: {len(speakers)} speakers, seed {seed}; babble...",
              file=sys.stderr, flush=True)
        babble = make_babble(np.random.default_rng([seed, 3]))
        rows, durs = [], []
        total = sum(len(clip_plan(preset, s, i, seed)) for i, s in enumerate(speakers))
        done = 0
        for si, spk in enumerate(speakers):
            for ci, (lab, sess, inten) in enumerate(clip_plan(preset, spk, si, seed)):
                rng = np.random.default_rng([seed, 4, si, ci])
                y = render_clip(spk, lab, sess, inten, preset, rng, babble)
                name = f"{spk.name}_s{sess + 1}_{lab}_{ci:03d}.wav"
                sf.write(tmp / name, y, SR, subtype="PCM_16")
                rows.append((name, lab, spk.name, f"{spk.name}_s{sess + 1}"))
                durs.append(len(y) / SR)
                done += 1
                if done % 100 == 0 or done == total:
                    print(f"[dev_corpus] {done}/{total} clips, {time.time() - t0:.1f} s", file=sys.stderr,
                          flush=True)
        with open(tmp / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "speaker", "session"])
            w.writerows(rows)
        with open(tmp / "speakers.json", "w") as f:  # the generation parameters, for whoever wonders
            json.dump({"preset": preset_name, "seed": seed,
                       "speakers": [s.__dict__ for s in speakers]}, f, indent=1)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    d = np.array(durs)
    per_class = {c: sum(1 for r in rows if r[1] == c) for c in CLASSES}
    per_speaker = {s.name: sum(1 for r in rows if r[2] == s.name) for s in speakers}
    return {"corpus": str(out), "preset": preset_name, "seed": seed, "clips": len(rows),
            "speakers": len(speakers), "languages": sorted({s.lang for s in speakers}),
            "voices": [s.voice for s in speakers], "per_class": per_class, "per_speaker": per_speaker,
            "duration_s": {"total": round(float(d.sum()), 1), "mean": round(float(d.mean()), 3),
                           "min": round(float(d.min()), 3), "p10": round(float(np.percentile(d, 10)), 3),
                           "median": round(float(np.median(d)), 3), "p90": round(float(np.percentile(d, 90)), 3),
                           "max": round(float(d.max()), 3),
                           "cut_at_max": int(np.sum(d >= (8.0 if preset.varlen else 4.0) - 1e-6))},
            "generation_s": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------------- baseline
def mel_fb(n_mels: int = 40, n_fft: int = 512, fmin: float = 50.0, fmax: float = 8000.0) -> np.ndarray:
    def hz2mel(f):
        return 2595 * np.log10(1 + f / 700)

    def mel2hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def logmel_stats(path: Path, fb: np.ndarray) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        x = signal.resample_poly(x, SR, sr).astype(np.float32)
    _, _, z = signal.stft(x, SR, window="hann", nperseg=400, noverlap=240, nfft=512, boundary=None, padded=False)
    lm = np.log(fb @ (np.abs(z) ** 2) + 1e-8)
    return np.concatenate([lm.mean(axis=1), lm.std(axis=1)])


def fit_logreg(X: np.ndarray, y: np.ndarray, n_cls: int, l2: float = 1e-2) -> np.ndarray:
    from scipy.optimize import minimize

    n, d = X.shape
    Xb = np.hstack([X, np.ones((n, 1))])
    Y = np.eye(n_cls)[y]

    def loss(w):
        W = w.reshape(d + 1, n_cls)
        z = Xb @ W
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        reg = 0.5 * l2 * np.sum(W[:-1] ** 2)
        g = Xb.T @ (p - Y) / n
        g[:-1] += l2 * W[:-1]
        return -np.mean(np.log(p[Y > 0] + 1e-12)) + reg, g.ravel()

    r = minimize(loss, np.zeros((d + 1) * n_cls), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return r.x.reshape(d + 1, n_cls)


def unweighted_acc(y: np.ndarray, p: np.ndarray, n_cls: int) -> float:
    rec = [np.mean(p[y == c] == c) for c in range(n_cls) if np.any(y == c)]
    return float(np.mean(rec))


def baseline(manifest: Path, folds: int, seed: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgeser.data.manifest import read_manifest

    t0 = time.time()
    items = read_manifest(Path(manifest))
    labels = sorted({it.label for it in items})
    y = np.array([labels.index(it.label) for it in items])
    spk = np.array([it.speaker for it in items])
    fb = mel_fb()
    X = np.stack([logmel_stats(it.path, fb) for it in items])
    uniq = np.array(sorted(set(spk)))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {s: i % folds for i, s in zip(range(len(uniq)), uniq[perm])}
    f_idx = np.array([fold_of[s] for s in spk])
    uas, ua_train = [], []
    for k in range(folds):
        tr, te = f_idx != k, f_idx == k
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-8
        W = fit_logreg((X[tr] - mu) / sd, y[tr], len(labels))

        def predict(A):
            return np.argmax(np.hstack([(A - mu) / sd, np.ones((len(A), 1))]) @ W, axis=1)

        uas.append(unweighted_acc(y[te], predict(X[te]), len(labels)))
        ua_train.append(unweighted_acc(y[tr], predict(X[tr]), len(labels)))
        print(f"[baseline] fold {k + 1}/{folds}: {te.sum()} test clips, {len(set(spk[te]))} speakers, "
              f"UA {100 * uas[-1]:.1f} % (train {100 * ua_train[-1]:.1f} %)", file=sys.stderr, flush=True)
    from scipy import stats

    m = float(np.mean(uas))
    half = float(stats.t.ppf(0.975, folds - 1) * np.std(uas, ddof=1) / math.sqrt(folds)) if folds > 1 else 0.0
    print(f"[baseline] {manifest}: UA {100 * m:.1f} % +- {100 * half:.1f} (95 % CI over {folds} folds), "
          f"chance {100 / len(labels):.0f} %", file=sys.stderr, flush=True)
    return {"manifest": str(manifest), "clips": len(items), "speakers": len(uniq), "classes": labels,
            "features": "log-mel 40 bands mean+std", "model": "logreg L2 (numpy/scipy)", "folds": folds,
            "ua_per_fold": [round(u, 4) for u in uas], "ua_mean": round(m, 4), "ua_ci95": round(half, 4),
            "ua_train_mean": round(float(np.mean(ua_train)), 4), "chance": round(1 / len(labels), 4),
            "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------------- votes
# Simulated annotators for data.labels: soft (issue 13, point 4). A rater hears the intended emotion with a
# probability that grows with the clip's expressiveness k (a speaker who barely expresses is misheard more); a
# mishearing follows the confusions real SER raters make (arousal is heard, valence less: neutral<->sad,
# happy<->angry), and a weakly expressed emotion is heard as neutral more often. Some raters give two labels
# (IEMOCAP evaluators may), each counting 1/2.
RATERS = 5
NEUTRAL_CLARITY = 0.75
CONFUSION = {"neutral": {"sad": 0.5, "happy": 0.3, "angry": 0.2},
             "happy": {"angry": 0.5, "neutral": 0.4, "sad": 0.1},
             "sad": {"neutral": 0.7, "happy": 0.1, "angry": 0.2},
             "angry": {"happy": 0.6, "neutral": 0.3, "sad": 0.1}}


def clip_votes(lab: str, k: float, rng: np.random.Generator) -> dict[str, float]:
    """RATERS simulated raters' votes for a clip of emotion `lab` at expressiveness k."""
    clarity = NEUTRAL_CLARITY if lab == "neutral" else 0.35 + 0.6 * (1 - math.exp(-1.5 * k))
    wrong = dict(CONFUSION[lab])
    if lab != "neutral":  # weakly expressed: heard as neutral
        wrong["neutral"] += 2.0 * math.exp(-2.0 * k)
    others, w = list(wrong), np.array(list(wrong.values()))
    votes: dict[str, float] = {}
    for _ in range(RATERS):
        heard = [lab if rng.random() < clarity else str(rng.choice(others, p=w / w.sum()))]
        if rng.random() < 0.1:  # a second label from this rater
            second = str(rng.choice([c for c in CLASSES if c != heard[0]]))
            heard.append(second)
        for h in heard:
            votes[h] = votes.get(h, 0.0) + 1.0 / len(heard)
    return votes


def write_votes(folder: Path) -> dict:
    """FOLDER/manifest-votes.csv: manifest.csv plus a `votes` column of simulated raters (deterministic from the
    corpus's preset and seed in speakers.json; the audio is not touched). Returns counts for the JSON line."""
    meta = json.loads((folder / "speakers.json").read_text())
    preset, seed = PRESETS[meta["preset"]], int(meta["seed"])
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {}
    for si, spk in enumerate(make_speakers(preset, seed)):
        for ci, (lab, sess, inten) in enumerate(clip_plan(preset, spk, si, seed)):
            rng = np.random.default_rng([seed, 5, si, ci])
            k = spk.express[lab]["k"] * inten
            by_name[f"{spk.name}_s{sess + 1}_{lab}_{ci:03d}.wav"] = clip_votes(lab, k, rng)
    missing = [r["path"] for r in rows if r["path"] not in by_name]
    if missing:
        sys.exit(f"{folder}: {len(missing)} manifest rows are not clips of preset {meta['preset']} seed {seed} "
                 f"(e.g. {missing[0]})")
    agree = 0
    tmp = folder / f".manifest-votes.csv.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "session", "votes"])
        for r in rows:
            v = by_name[r["path"]]
            agree += max(v, key=lambda c: (v[c], c == r["label"])) == r["label"]
            w.writerow([r["path"], r["label"], r["speaker"], r["session"],
                        ";".join(f"{c}:{round(v[c], 4):g}" for c in CLASSES if c in v)])
    os.replace(tmp, folder / "manifest-votes.csv")
    return {"votes": str(folder / "manifest-votes.csv"), "raters": RATERS, "clips": len(rows),
            "majority_is_intended": round(agree / len(rows), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="corpus folder to write")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    ap.add_argument("--baseline", type=Path, metavar="MANIFEST", help="run the baseline on a manifest instead")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--votes", type=Path, metavar="DIR", help="write DIR/manifest-votes.csv: the corpus's "
                    "manifest with simulated annotator votes (for data.labels: soft)")
    a = ap.parse_args(argv)
    if a.votes:
        print(json.dumps(write_votes(a.votes)))
    elif a.baseline:
        print(json.dumps(baseline(a.baseline, a.folds, a.seed)))
    elif a.out:
        print(json.dumps(generate(a.out, a.preset, a.seed, a.force)))
    else:
        ap.error("give --out DIR (generate) or --baseline MANIFEST")


if __name__ == "__main__":
    main()
