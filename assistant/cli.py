"""`mmapps assistant ...`: synth, train, evaluate, understand, chat. Thin: parse, call the pipeline, print.
Only typer and the standard library at module level (heavy imports inside commands keep --help fast)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mmapps.cli_utils import (DEVICE_OPT, JSON_OPT, MODEL_OPT, SHARD_OPT, WORKERS_OPT, check_output_dir,
                              check_output_file, emit_json, print_table, run_command)
from mmapps.device import apply_thread_limit

app = typer.Typer(help="Speech + text -> spoken-language understanding (transcript, intent, slots, out-of-scope, "
                       "reply).", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ASR_OPT = typer.Option("whisper", "--asr", help="speech recogniser: whisper (default, open vocabulary) or "
                                                  "pocketsphinx (light, domain LM)")


def _pipeline(model, device, asr="whisper"):
    from mmapps.config import check_choice

    from .asr import ASR_CHOICES

    check_choice("--device", device, ["auto", "cpu", "cuda"])
    check_choice("--asr", asr, ASR_CHOICES)
    apply_thread_limit()
    from .pipeline import Pipeline

    return Pipeline.from_checkpoint(model, device=device, asr=asr)


@app.command()
def synth(out: Path = typer.Argument(..., help="output folder (wav/ + manifest.jsonl)"),
          from_: Path = typer.Option(..., "--from", help="text dataset: SNIPS folder, CLINC150 json or manifest"),
          seed: int = typer.Option(0, "--seed"),
          voices: str = typer.Option("en-us,en-gb,en-029", "--voices", help="comma-separated espeak-ng voices"),
          limit: Optional[int] = typer.Option(None, "--limit", help="at most N utterances"),
          exclude: List[Path] = typer.Option([], "--exclude", help="manifest(s) whose utterances are left out (a "
                                             "validation set disjoint from the training speech); repeatable"),
          workers: int = WORKERS_OPT, shard: Optional[str] = SHARD_OPT, json_out: bool = JSON_OPT):
    """Speech for a text intent dataset via espeak-ng (16 kHz wav, ~30 dB SNR noise)."""
    def go():
        from mmapps.parallel import parse_shard

        check_output_dir(out)

        from .io import load_dataset
        from .synth import synth_dataset

        sh = parse_shard(shard) if shard else (0, 1)
        if limit is not None and limit < 1:
            raise typer.BadParameter("--limit must be >= 1")
        examples, used = load_dataset(from_)
        if exclude:
            from mmapps.errors import UserError

            from .synth import without_spoken

            n_before = len(examples)
            examples = without_spoken(examples, exclude)
            if not examples:
                raise UserError(f"every utterance of {from_} is in --exclude: nothing left to speak")
            used += f", {n_before - len(examples)} utterances spoken in --exclude left out"
        manifest = synth_dataset(examples, out, seed=seed, voices=tuple(v.strip() for v in voices.split(",") if v.strip()),
                                 limit=limit, shard=sh, workers=workers)
        n = sum(1 for _ in open(manifest, encoding="utf-8"))
        return {"manifest": str(manifest), "utterances": n, "from": used}

    r = run_command(go)
    emit_json(r) if json_out else typer.echo(f"wrote {r['utterances']} utterances to {r['manifest']} (from {r['from']})")


@app.command()
def train(data: List[Path] = typer.Argument(..., help="SNIPS folder(s), CLINC150 json or JSON-lines manifest(s)"),
          out: Path = typer.Option(..., "--out", help="checkpoint to write"),
          oos_from: Optional[Path] = typer.Option(None, "--oos-from",
                                                  help="CLINC150 json whose out-of-domain utterances train the oos class"),
          fusion: Optional[str] = typer.Option(None, "--fusion", help="concat, weighted, gated, attention"),
          config: Optional[Path] = typer.Option(None, "--config", help="TOML/YAML training config"),
          set_: List[str] = typer.Option([], "--set", help="override key=value (train.* or model.*)"),
          epochs: Optional[int] = typer.Option(None, "--epochs"),
          seed: int = typer.Option(0, "--seed"),
          resume: bool = typer.Option(False, "--resume"),
          refine_slots: Optional[Path] = typer.Option(
              None, "--refine-slots", help="a trained checkpoint: fine-tune only its slot path (MiniLM's top "
              "--tune-layers layers, a slot BiGRU, the slot head) on DATA, which must be its own training data; the "
              "intent / out-of-scope path, threshold and ASR gate are kept unchanged"),
          tune_layers: int = typer.Option(4, "--tune-layers", min=1, max=6,
                                          help="MiniLM layers fine-tuned by --refine-slots"),
          refine_audio: Optional[Path] = typer.Option(
              None, "--refine-audio", help="a trained checkpoint: give it an audio branch on Whisper encoder states, "
              "trained on DATA = manifests from `mmapps assistant transcribe`; everything else is kept unchanged"),
          json_out: bool = JSON_OPT):
    """Train the speech+text SLU model with the core Trainer (works under torchrun)."""
    def go():
        from mmapps.errors import UserError

        from .train import refine_audio as refine_a
        from .train import refine_slots as refine
        from .train import train as run

        check_output_file(out)
        if refine_slots is not None and refine_audio is not None:
            raise UserError("--refine-slots and --refine-audio are separate stages: run one, then the other")
        if refine_audio is not None:
            if fusion or config or resume or oos_from:
                raise UserError("--refine-audio keeps the checkpoint's model and trains on transcribed speech only: "
                                "--fusion, --config, --resume and --oos-from do not apply")
            return refine_a(refine_audio, list(data), out,
                            cfg_overrides=list(set_) + ([f"train.epochs={epochs}"] if epochs else []), seed=seed)
        if refine_slots is not None:
            if fusion or config or resume:
                raise UserError("--refine-slots keeps the checkpoint's model: --fusion, --config and --resume "
                                "do not apply")
            return refine(refine_slots, list(data), out, oos_from=oos_from,
                          cfg_overrides=list(set_) + ([f"train.epochs={epochs}"] if epochs else []),
                          layers=tune_layers, seed=seed)
        return run(list(data), out, oos_from=oos_from, cfg_overrides=set_, config_file=config, fusion=fusion,
                   epochs=epochs, seed=seed, resume=resume)

    r = run_command(go)
    if json_out:
        emit_json(r)
    else:
        print_table([{"metric": k, "value": v} for k, v in r["last"].items()], f"wrote {r['model']} "
                    f"({r['epochs']} epochs; last epoch)")


@app.command()
def transcribe(manifest: Path = typer.Argument(..., help="spoken manifest (mmapps assistant synth)"),
               out: Path = typer.Option(..., "--out", help="JSON-lines manifest to write (text + aligned tags)"),
               model: Optional[Path] = MODEL_OPT, device: str = DEVICE_OPT, asr: str = ASR_OPT,
               shard: Optional[str] = SHARD_OPT, json_out: bool = JSON_OPT):
    """What the ASR hears in spoken training utterances, with the slot tags aligned to it: NLU training rows
    (pass the file to `train` beside the typed data). Spread big sets over processes with --shard."""
    def go():
        import json

        from mmapps.io import atomic_write_text
        from mmapps.parallel import parse_shard, shard_items

        from .io import read_manifest
        from .train import asr_examples

        check_output_file(out)
        examples = read_manifest(manifest)
        if shard:
            examples = shard_items(examples, *parse_shard(shard))
        rows = asr_examples(_pipeline(model, device, asr), examples)
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
        return {"manifest": str(out), "utterances": len(rows), "spoken": sum(1 for e in examples if e.get("audio"))}

    r = run_command(go)
    emit_json(r) if json_out else typer.echo(f"wrote {r['utterances']} transcribed utterances to {r['manifest']} "
                                             f"(of {r['spoken']} spoken)")


@app.command()
def evaluate(data: Path = typer.Argument(..., help="SNIPS folder, CLINC150 json (val + oos_val) or manifest"),
             model: Optional[Path] = MODEL_OPT, device: str = DEVICE_OPT, asr: str = ASR_OPT,
             text_only: bool = typer.Option(False, "--text-only", help="ignore audio in a manifest"),
             shard: Optional[str] = SHARD_OPT, json_out: bool = JSON_OPT):
    """intent_accuracy, slot_f1 (CoNLL spans), sentence_accuracy, oos_recall/in_scope_accuracy, wer; with audio,
    every metric comes from the audio (ASR -> NLU). Spread big sets over processes or machines with --shard."""
    def go():
        from mmapps.parallel import parse_shard, shard_items

        from .evaluate import evaluate_examples
        from .io import load_dataset

        examples, used = load_dataset(data, clinc_splits=("val", "oos_val"))
        if shard:
            examples = shard_items(examples, *parse_shard(shard))
        pipe = _pipeline(model, device, asr)
        return {"data": used, **evaluate_examples(pipe, examples, use_audio=not text_only)}

    r = run_command(go)
    if json_out:
        emit_json(r)
        return
    print_table([{"metric": k, "value": v} for k, v in r.items() if k != "data"], f"assistant evaluate ({r['data']})")


def _print_result(r: dict):
    rows = [{"field": k, "value": r.get(k)} for k in ("transcript", "asr_confidence", "intent", "confidence",
                                                      "slots", "out_of_scope", "reply", "rtf", "latency_ms")]
    alternatives = [f"{h['transcript']} ({h['posterior']:.2f})" for h in (r.get("hypotheses") or [])[1:]]
    if alternatives:  # what else the recogniser heard, as the intent weighed it
        rows.insert(1, {"field": "alternatives", "value": "; ".join(alternatives)})
    print_table(rows)


@app.command()
def understand(audio: Optional[Path] = typer.Option(None, "--audio", help="wav/flac/ogg (any rate) or raw with --raw"),
               text: Optional[str] = typer.Option(None, "--text", help="typed text (alone or with --audio)"),
               raw: bool = typer.Option(False, "--raw", help="audio is headerless 16 kHz int16"),
               asr: str = ASR_OPT, model: Optional[Path] = MODEL_OPT, device: str = DEVICE_OPT,
               json_out: bool = JSON_OPT):
    """{transcript, intent, confidence, slots, out_of_scope, reply, rtf} for speech and/or text."""
    def go():
        from mmapps.errors import UserError

        if audio is None and text is None:
            raise UserError("no input: give --audio WAV and/or --text TEXT")
        from .io import check_text

        if text is not None:
            check_text(text)
        if audio is not None:  # validate the audio before loading the model (fast refusal)
            from .io import load_audio

            load_audio(audio, raw=raw)
        return _pipeline(model, device, asr).understand(audio=audio, text=text, raw=raw)

    r = run_command(go)
    emit_json(r) if json_out else _print_result(r)


@app.command()
def chat(model: Optional[Path] = MODEL_OPT, device: str = DEVICE_OPT, asr: str = ASR_OPT):
    """Interactive: type text or a path to a wav; 'quit' or EOF ends."""
    import sys

    from mmapps.errors import UserError

    pipe = run_command(_pipeline, model, device, asr)
    typer.echo("say something (text or a path to a wav; 'quit' to end)", err=True)
    for line in sys.stdin:
        line = line.strip()
        if line.lower() in ("quit", "exit"):
            break
        if not line:
            continue
        try:
            p = Path(line)
            r = pipe.understand(audio=p) if p.suffix.lower() in (".wav", ".flac", ".ogg", ".raw") else pipe.understand(text=line)
            heard = f"   (heard: {r['transcript']})" if r["asr"] else ""
            typer.echo(f"[{r['intent']} {r['confidence']:.2f}{' OOS' if r['out_of_scope'] else ''}] {r['reply']}"
                       f"   slots {r['slots']}  {r['latency_ms']:.0f} ms{heard}")
        except UserError as e:
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)


def demo(out_dir: Path) -> dict:
    """`mmapps demo`: the bundled model on the bundled sample wavs; writes one picture per sample."""
    import json

    from mmapps.paths import data_dir

    from .pipeline import Pipeline
    from .viz import plot_understanding

    apply_thread_limit()
    samples = data_dir() / "assistant" / "samples"
    pipe = Pipeline.from_checkpoint(None)
    index = json.loads((samples / "samples.json").read_text(encoding="utf-8"))
    results = []
    for item in index:
        from .io import load_audio

        x = load_audio(samples / item["audio"])
        r = pipe.understand(audio=x)
        png = plot_understanding(x, r, Path(out_dir) / (Path(item["audio"]).stem + ".png"), reference=item["text"])
        results.append({"audio": item["audio"], "voice": item.get("voice"), "said": item["text"],
                        "transcript": r["transcript"], "intent": r["intent"], "expected_intent": item["intent"],
                        "slots": r["slots"], "reply": r["reply"], "latency_ms": r["latency_ms"], "rtf": r["rtf"],
                        "picture": str(png)})
    text = pipe.understand(text="book a table for two at a sushi place in seattle tonight")
    return {"speech": results, "text": {k: text[k] for k in ("intent", "slots", "reply", "out_of_scope")},
            "oos_example": pipe.understand(text="what is my credit card balance")["out_of_scope"]}
