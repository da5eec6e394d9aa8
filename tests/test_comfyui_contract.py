"""The ComfyUI API contract (tests/data/comfyui_api.toml): complete for the pack's source, and met by the installed
ComfyUI. A future ComfyUI that drops or renames a symbol, or a parameter the pack passes or overrides, fails here
instead of at a user's first render (run the suite against any ComfyUI with CONTROLNEXT_COMFYUI, see the README)."""

from __future__ import annotations

import comfy.model_patcher
import comfy.samplers
import comfyui_version

import comfy_contract as cc


def test_the_contract_lists_exactly_what_the_source_uses():
    scan = cc.scan_sources()
    used = cc.used_contract(scan)
    # optional entries are listed by hand (getattr lookups), not found by reading
    recorded = {u: p for u, p in cc.load_contract().entries.items() if u.kind != "optional"}
    missing = {u: p for u, p in used.items() if u not in recorded or not p <= recorded[u]}
    stale = {u: p for u, p in recorded.items() if u not in used}
    loose = {u: recorded[u] - p for u, p in used.items() if u in recorded and recorded[u] - p}
    message = []
    if missing:
        seen = "\n".join(f"  {u.module}.{u.name} at {scan.where[u]}" for u in missing)
        message.append(f"Used by the source but not recorded:\n{seen}\nadd to tests/data/comfyui_api.toml:\n"
                       + cc.as_toml({u: used[u] for u in missing}))
    if stale:
        message.append("Recorded but no longer used (remove):\n" + cc.as_toml(stale))
    if loose:
        message.append("Recorded parameters no longer passed (remove them):\n" + cc.as_toml(loose))
    assert not message, "\n".join(message)


def test_the_installed_comfyui_meets_the_contract():
    contract = cc.load_contract()
    problems = cc.check_host(contract.entries, contract.attributes, contract.newer)
    version = comfyui_version.__version__
    assert not problems, f"ComfyUI {version} breaks the pack's API contract:\n" + "\n".join(problems)


def test_the_check_catches_a_removed_symbol_and_a_changed_override(monkeypatch):
    contract = cc.load_contract()
    recorded = contract.entries
    assert cc.Use("override", "comfy.samplers", "CFGGuider.predict_noise") in recorded
    assert cc.Use("symbol", "comfy.samplers", "calculate_sigmas") in recorded
    original = comfy.samplers.CFGGuider.predict_noise

    def with_new_parameter(self, x, timestep, model_options={}, seed=None, latent_shapes=None):  # noqa: B006
        return original(self, x, timestep, model_options, seed)

    monkeypatch.setattr(comfy.samplers.CFGGuider, "predict_noise", with_new_parameter)
    monkeypatch.delattr(comfy.samplers, "calculate_sigmas")
    problems = cc.check_host(recorded, contract.attributes, contract.newer)
    assert any(p.startswith("override comfy.samplers.CFGGuider.predict_noise") and "latent_shapes" in p
               for p in problems), problems
    assert any(p.startswith("symbol comfy.samplers.calculate_sigmas: missing") for p in problems), problems
    assert len(problems) == 2, problems


def test_the_check_catches_a_dropped_keyword_and_a_dropped_attribute(monkeypatch):
    monkeypatch.setattr(comfy.samplers, "sampler_object", lambda name: None)
    problems = cc.check_host({cc.Use("symbol", "comfy.samplers", "sampler_object"): {"sampler_name"}}, [])
    assert problems == ["symbol comfy.samplers.sampler_object: no longer takes sampler_name (takes ['name'])"]

    present = {"module": "comfy.model_patcher", "name": "ModelPatcher.model_options"}  # assigned in __init__
    renamed = {"module": "comfy.model_patcher", "name": "ModelPatcher.model_option"}
    assert cc.check_host({}, [present]) == []
    assert cc.check_host({}, [renamed]) == [
        "attribute comfy.model_patcher.ModelPatcher.model_option: neither defined on the class nor assigned as "
        "self.model_option"]


def test_optional_symbols_may_be_absent_but_must_keep_their_parameters(monkeypatch):
    import comfy.model_management

    optional = {cc.Use("optional", "comfy.model_management", "is_oom"): {"e"}}
    monkeypatch.delattr(comfy.model_management, "is_oom", raising=False)  # as on ComfyUI 0.3.75
    assert cc.check_host(optional, []) == []
    monkeypatch.setattr(comfy.model_management, "is_oom", lambda error: False, raising=False)
    assert cc.check_host(optional, []) == [
        "optional comfy.model_management.is_oom: no longer takes e (takes ['error'])"]
