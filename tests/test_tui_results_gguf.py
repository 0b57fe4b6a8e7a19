"""The Results screen's GGUF export, driven with Pilot: the file ``finetty export --gguf --quant`` writes, made
from the app in its model child, read back with gguf's own reader; and an architecture GGUF cannot hold refused
with the CLI's words, shown as text, leaving no folder behind."""

from __future__ import annotations

import asyncio
import json
import shutil

from textual.widgets import Input, RadioSet, Select, TabbedContent

from finetty.core.results import gguf as gguf_export

from .test_tui_results import ResultsApp, settle


def test_gguf_export_from_the_results_screen_then_a_refused_one(identity_run, tmp_path):
    asyncio.run(_gguf_export(identity_run, tmp_path))


async def _gguf_export(identity_run, tmp_path):
    import gguf
    from safetensors import safe_open

    from finetty.core.results import inference

    run = tmp_path / "run"
    shutil.copytree(identity_run, run)  # the second export points the copy at a base GGUF cannot hold
    base = inference.base_model_dir(run)
    base_tensors = sum(len(safe_open(str(f), framework="np").keys()) for f in base.glob("*.safetensors"))
    app = ResultsApp(run, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        screen.query_one("#results-tabs", TabbedContent).active = "tab-export"
        quant = screen.query_one("#export-quant", Select)
        assert not quant.display, "the adapter has no quantisation to choose"
        screen.query_one("#export-kind", RadioSet).query_one("#export-gguf").value = True
        await pilot.pause()
        assert quant.display and quant.value == gguf_export.DEFAULT_QUANT, "the CLI's default"
        quant.value = "q8_0"
        await pilot.pause()
        out = tmp_path / "exports" / f"{run.name}-gguf-q8_0"
        assert screen.query_one("#export-out", Input).value == str(out)

        await pilot.press("x")
        assert "export" in screen.jobs and screen.query_one("#export-progress").display
        await settle(pilot, lambda: "export" not in screen.jobs)
        assert screen.exported is not None, str(screen.query_one("#export-status").render())
        assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "finetty-export.json", "model.gguf"]
        assert not out.with_name(out.name + ".partial").exists()
        reader = gguf.GGUFReader(str(out / "model.gguf"))
        assert reader.fields["general.architecture"].contents() == "llama"
        assert len(reader.tensors) == base_tensors, "every tensor of the base, the adapter merged in"
        assert gguf.GGMLQuantizationType.Q8_0 in {t.tensor_type for t in reader.tensors}
        status = str(screen.query_one("#export-status").render())
        assert f"wrote GGUF q8_0 (llama, {base_tensors} tensors) of final to {out / 'model.gguf'}" in status
        shown = str(screen.query_one("#export-result").render())
        assert f"Ollama:    ollama create NAME -f {out / 'Modelfile'}" in shown, shown  # the CLI's words
        assert f"llama.cpp: llama-cli -m {out / 'model.gguf'} -cnv" in shown, shown
        assert not screen.query_one("#export-start").disabled

        # the base is now one GGUF cannot hold, under a name that is rich markup: refused as text, nothing written
        odd = tmp_path / "odd-base"
        shutil.copytree(base, odd)
        config = json.loads((odd / "config.json").read_text())
        (odd / "config.json").write_text(json.dumps({**config, "architectures": ["[bold]Gpt2[/bold]ForCausalLM"]}))
        events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        assert any(event["type"] == "run_started" and event.get("model_dir") for event in events)
        (run / "events.jsonl").write_text("".join(
            json.dumps({**event, "model_dir": str(odd)} if event["type"] == "run_started" else event) + "\n"
            for event in events))
        refused = tmp_path / "refused"
        screen.query_one("#export-out", Input).value = str(refused)
        await pilot.press("x")
        await settle(pilot, lambda: "export" not in screen.jobs)
        status = str(screen.query_one("#export-status").render())
        assert "export failed:" in status and "[bold]Gpt2[/bold]ForCausalLM cannot be exported to GGUF" in status
        assert "supported: LlamaForCausalLM" in status, status
        assert not refused.exists() and not refused.with_name("refused.partial").exists()
        assert not screen.query_one("#export-start").disabled, "the failure reset the button"
