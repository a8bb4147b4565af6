"""Editing a tokenizer.json post-processor so that encoding puts the bos before the text, or no longer does."""

from __future__ import annotations


def processor_with_bos(processor: dict | None, bos: str, bos_id: int) -> dict | bool | None:
    """A post-processor's JSON that also puts `bos` before the text, and before a pair's second text (Llama's
    "<s> $A <s>:1 $B:1"); False for one that takes no template (BERT's kind). A template already there gets it (two
    templates in one Sequence fail on pairs); a ByteLevel processor (offsets only) is kept before the new template."""
    if processor is None:
        return processor_with_bos({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                          "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                          "special_tokens": {}}, bos, bos_id)
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        def before(piece: dict) -> list[dict]:
            seq = piece.get("Sequence")
            return [{"SpecialToken": {"id": bos, "type_id": seq["type_id"]}}, piece] if seq else [piece]

        return {**processor, "single": [p for piece in processor["single"] for p in before(piece)],
                "pair": [p for piece in processor["pair"] for p in before(piece)],
                "special_tokens": {**processor.get("special_tokens", {}),
                                   bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    if kind == "Sequence":
        inner = processor["processors"]
        at = next((i for i, p in enumerate(inner) if p.get("type") == "TemplateProcessing"), None)
        if at is None:
            return {**processor, "processors": [*inner, processor_with_bos(None, bos, bos_id)]}
        edited = processor_with_bos(inner[at], bos, bos_id)
        return {**processor, "processors": [*inner[:at], edited, *inner[at + 1:]]}
    if kind == "ByteLevel":
        return {"type": "Sequence", "processors": [processor, processor_with_bos(None, bos, bos_id)]}
    return False


def processor_without_bos(processor: dict | None, bos: str, bos_id: int) -> dict | bool | None:
    """A post-processor's JSON without the bos its templates put before the text (and before a pair's second text,
    as Llama's "<s> $A <s>:1 $B:1"); a bos elsewhere (GPT-2's "<|endoftext|>" is bos and eos) stays. False for one
    whose bos cannot be dropped alone (BERT's kind)."""
    if processor is None:
        return None
    kind = processor.get("type")
    if kind == "Sequence":
        inner = [processor_without_bos(p, bos, bos_id) for p in processor["processors"]]
        return False if False in inner else {**processor, "processors": inner}
    if kind != "TemplateProcessing":
        return processor if kind == "ByteLevel" else False

    def is_bos(piece: dict) -> bool:
        return piece.get("SpecialToken", {}).get("id") == bos

    def trimmed(pieces: list[dict]) -> list[dict]:
        if not pieces or not is_bos(pieces[0]):
            return pieces
        return [p for i, p in enumerate(pieces[1:], 1)
                if not (is_bos(p) and i + 1 < len(pieces) and pieces[i + 1].get("Sequence", {}).get("id") == "B")]

    out = {**processor, "single": trimmed(processor["single"]), "pair": trimmed(processor["pair"])}
    used = {p["SpecialToken"]["id"] for p in out["single"] + out["pair"] if "SpecialToken" in p}
    out["special_tokens"] = {k: v for k, v in processor.get("special_tokens", {}).items() if k in used}
    return out
