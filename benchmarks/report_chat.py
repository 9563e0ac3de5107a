"""The causal-LM (chat) part of the SST-2 report: the targets against TRL and the compute each run reaches.

Useful work is 4 x (base parameters) FLOPs per real token: a forward pass costs 2 FLOPs per weight per
token (a multiply and an add), and the backward pass through a frozen base needs only the gradient with
respect to the activations (another 2), not the weight gradients full fine-tuning adds (the third 2 of
the usual 6). The adapters' own FLOPs (r=8) and attention's (sequences of ~54 tokens) are under 1% and
left out. The count is the base model's parameters with the tied embedding/LM head counted once: the
head's matmul is work at every position, while the embedding lookup costs nothing. The same count for
every method, so a run that skips work (the head at labels only) shows as more useful FLOP/s.
"""

from __future__ import annotations

from typing import Any

SPEED_TARGET = 1.5  # chat-lorasp's real tokens/s over TRL's
ACCURACY_SLACK_POINTS = 1.0  # chat-lorasp may be this far below TRL's dev accuracy
INT8_RSS_TARGET = 0.6  # the int8 base's peak RSS over the fp32 reference's
INT8_ACCURACY_SLACK_POINTS = 1.5
FLOPS_PER_PARAMETER_PER_TOKEN = 4


def _verdict(met: bool, by: str) -> str:
    return f"met (by {by})" if met else f"MISSED (by {by})"


def chat_target_lines(best: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    sp, trl = best.get("chat-lorasp"), best.get("trl-sft")
    if sp and trl:
        ratio = sp["tokens_per_second"] / trl["tokens_per_second"]
        lines.append(
            f"- Real tokens/s: chat-lorasp {sp['tokens_per_second']:.0f} vs trl-sft "
            f"{trl['tokens_per_second']:.0f} = {ratio:.2f}x (target >= {SPEED_TARGET}x): "
            + _verdict(ratio >= SPEED_TARGET, f"{abs(ratio - SPEED_TARGET):.2f}x")
        )
        gap = 100 * (trl["dev_accuracy"] - sp["dev_accuracy"])
        lines.append(
            f"- Dev accuracy: chat-lorasp {100 * sp['dev_accuracy']:.2f} vs trl-sft "
            f"{100 * trl['dev_accuracy']:.2f} ({-gap:+.2f} points; target >= {-ACCURACY_SLACK_POINTS:+.1f}): "
            + _verdict(gap <= ACCURACY_SLACK_POINTS, f"{abs(ACCURACY_SLACK_POINTS - gap):.2f} points")
        )
        rss = sp["train_peak_rss_mb"] - trl["train_peak_rss_mb"]
        lines.append(
            f"- Peak RSS while fine-tuning: chat-lorasp {sp['train_peak_rss_mb']:.0f} MB vs trl-sft "
            f"{trl['train_peak_rss_mb']:.0f} MB ({rss:+.0f} MB; target <= 0): "
            + _verdict(rss <= 0, f"{abs(rss):.0f} MB")
            + f" (whole process, generation eval included: {sp['peak_rss_mb']:.0f} vs "
            f"{trl['peak_rss_mb']:.0f} MB)"
        )
    int8, fp32 = best.get("chat-lorasp-int8"), best.get("chat-lorasp-fp32")
    if int8 and fp32:
        ratio = int8["train_peak_rss_mb"] / fp32["train_peak_rss_mb"]
        lines.append(
            f"- int8 base peak RSS while fine-tuning: {int8['train_peak_rss_mb']:.0f} MB vs fp32 "
            f"{fp32['train_peak_rss_mb']:.0f} MB = "
            f"{ratio:.2f}x (target <= {INT8_RSS_TARGET}x): "
            + _verdict(ratio <= INT8_RSS_TARGET, f"{abs(INT8_RSS_TARGET - ratio):.2f}x")
        )
        drop = 100 * (fp32["dev_accuracy"] - int8["dev_accuracy"])
        lines.append(
            f"- int8 base dev accuracy: {100 * int8['dev_accuracy']:.2f} vs fp32 "
            f"{100 * fp32['dev_accuracy']:.2f} ({-drop:+.2f} points; target >= "
            f"{-INT8_ACCURACY_SLACK_POINTS:+.1f}): "
            + _verdict(
                drop <= INT8_ACCURACY_SLACK_POINTS, f"{abs(INT8_ACCURACY_SLACK_POINTS - drop):.2f} points"
            )
        )
    return lines


def _precision(row: dict[str, Any]) -> str:
    precision = row.get("precision")
    if not precision:
        return "-"
    checkpointing = ", checkpointing" if row.get("gradient_checkpointing") else ""
    return f"{precision['precision']} (base {precision['base_dtype']}){checkpointing}"


def compute_lines(results: list[dict[str, Any]], peaks: dict[str, Any] | None) -> list[str]:
    """Each trained chat run's useful FLOP/s and the fraction of this CPU's matmul peaks it reaches."""
    rows = [r for r in results if r.get("base_parameters") and r.get("tokens_per_second")]
    if not rows:
        return []
    lines = ["## Compute", ""]
    if peaks:
        lines += [
            f"This CPU's dense matmul peaks (benchmarks.matmul_peak, {peaks['n']}x{peaks['n']}, "
            f"{peaks['threads']} threads, best of its repeats): fp32 {peaks['fp32_gflops']:.1f} GFLOP/s, "
            f"bf16 {peaks['bf16_gflops']:.1f} GFLOP/s ({peaks['bf16_over_fp32']}x; fast bf16 detected: "
            f"{peaks['fast_bf16_detected']}).",
            "",
        ]
    lines += [
        f"Useful work: {FLOPS_PER_PARAMETER_PER_TOKEN} x {rows[0]['base_parameters']:,} base parameters "
        "FLOPs per real token (forward 2, backward to the activations 2; a frozen base needs no weight "
        "gradients; the tied embedding/LM head counted once).",
        "",
        "| method | seed | precision | real tokens/s | useful GFLOP/s | of bf16 peak | of fp32 peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gflops = FLOPS_PER_PARAMETER_PER_TOKEN * r["base_parameters"] * r["tokens_per_second"] / 1e9
        of_bf16 = f"{100 * gflops / peaks['bf16_gflops']:.1f}%" if peaks else "-"
        of_fp32 = f"{100 * gflops / peaks['fp32_gflops']:.1f}%" if peaks else "-"
        lines.append(
            f"| {r['method']} | {r['seed']} | {_precision(r)} | {r['tokens_per_second']:.0f} | "
            f"{gflops:.1f} | {of_bf16} | {of_fp32} |"
        )
    return [*lines, ""]
