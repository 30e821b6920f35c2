"""Renderers: a job's result as rich tables and lines. No computation, no files."""

from __future__ import annotations

import json

from rich.table import Table

from .app import console


def _ci(summary: dict) -> str:
    return f"{100 * summary['ci95'][0]:.1f}-{100 * summary['ci95'][1]:.1f}"


def _notes_and_files(result: dict, files_key: str = "files") -> None:
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for path in result.get(files_key, []) or []:
        console.print(f"wrote {path}")


# ----------------------------------------------------------------------------- demo
def demo(result) -> None:
    cfg = result.config
    console.print(
        f"[bold]CSC layer demo[/] on {result.train_images} training / {result.test_images} held-out digits "
        f"({cfg['image_size']}x{cfg['image_size']}): {cfg['atoms']} atoms {cfg['kernel_size']}x{cfg['kernel_size']}, "
        f"lam={cfg['lam']:g}, K={cfg['steps']}"
    )
    console.print(
        "Lasso objective per epoch: " + ", ".join(f"{v:.3f}" for v in result.loss_per_epoch)
        + f"   step t={result.step_size:.4g} (L={result.lipschitz:.4g})"
    )
    table = Table(title=f"Held-out codes vs lambda (K={cfg['steps']})")
    for col in ("lambda", "non-zeros", "relative recon. error", "objective"):
        table.add_column(col, justify="right")
    for row in result.sparsity_vs_lam:
        table.add_row(f"{row['lam']:g}", f"{100 * row['nonzero']:.1f}%", f"{row['relative_error']:.3f}",
                      f"{row['objective']:.3f}")
    console.print(table)
    conv = Table(title=f"Distance to the converged code ({cfg['converged_steps']} steps): relative objective gap")
    for col in ("K", "FISTA", "ISTA"):
        conv.add_column(col, justify="right")
    for row in result.convergence:
        conv.add_row(str(row["steps"]), f"{row['fista']:.2e}", f"{row['ista']:.2e}")
    console.print(conv)
    verdict = "[green]holds[/]" if result.one_step_identity_error < 1e-5 else "[red]FAILS[/]"
    console.print(f"K = 1 is conv + fixed bias + ReLU: {verdict} (max difference {result.one_step_identity_error:.1e})")
    for path in result.images:
        console.print(f"wrote {path}")


# ----------------------------------------------------------------------------- train
def train(result) -> None:
    last = result.last
    if "test_psnr" in last:  # an autoencoder (the CTRL game)
        console.print(f"last epoch: test reconstruction PSNR {last['test_psnr']:.2f} dB (MSE {last['test_mse']:.4f}), "
                      f"test features dR {last['test_dR']:.2f} (R {last['test_R']:.2f}, Rc {last['test_Rc']:.2f})")
        for note in result.notes:
            console.print(f"note: {note}")
        console.print(f"wrote {result.model_path} and metrics in {result.out} ({result.seconds:.0f} s)")
        return
    console.print(f"last epoch: test accuracy {100 * last['test_acc']:.2f}%")
    if result.best:
        console.print(f"best on the held-out split: epoch {result.best['epoch']} (val {100 * result.best['val_acc']:.2f}%, "
                      f"test {100 * result.best['test_acc']:.2f}%)")
    console.print(f"wrote {result.model_path} and metrics in {result.out} ({result.seconds:.0f} s)")


# ----------------------------------------------------------------------------- eval
def evaluate(result: dict) -> None:
    clean = result["clean"]
    mode = result["lam"]["mode"]
    console.print(f"[bold]{result['model']}[/] on {result['dataset']} ({result['images']} test images), "
                  f"lambda: {mode}" + (f" {result['lam'].get('values')}" if result['lam'].get('values') else ""))
    t = Table(title="Clean")
    for col in ("top-1", "top-5", "loss"):
        t.add_column(col, justify="right")
    t.add_row(f"{100 * clean['top1']:.2f}%", f"{100 * clean['top5']:.2f}%", f"{clean['loss']:.4f}")
    console.print(t)
    if len(clean["per_class"]) <= 20:
        pc = Table(title="Per class (top-1)")
        for name in clean["class_names"]:
            pc.add_column(str(name)[:10], justify="right")
        pc.add_row(*[f"{100 * a:.1f}" if a is not None else "-" for a in clean["per_class"]])
        console.print(pc)
    cal = result.get("calibration")
    if cal:
        calibration(cal, f"{cal['layer']} on {cal['images']} training images with {', '.join(cal['corruptions'])}",
                    "accuracy", lambda v: f"{100 * v:.1f}%")
    table = result.get("corruptions")
    if table:
        _corruptions(table, mode)
    base = result.get("baseline")
    if base:
        console.print(f"vs baseline {base['model']}: mCE {100 * base['mce']:.1f}%, relative mCE "
                      f"{100 * base['relative_mce']:.1f}%")
    sweep = result.get("sweep")
    if sweep:
        _sweep(sweep)
    _notes_and_files(result)


def calibration(cal: dict, fitted_on: str, score: str, fmt) -> None:
    """What --calibrate-lambda fitted and stored (a classifier's or an autoencoder's)."""
    held = f", rule chosen on {cal['held_out_images']} held-out ones" if cal.get("held_out_images") else ""
    console.print(f"calibrated {fitted_on}{held}; stored rule {cal['rule']}: "
                  f"{cal['rules'][cal['rule']]['formula']} (written to {cal['written_to']})")
    if cal.get("selection"):
        console.print(f"held-out mean {score} per rule: " + ", ".join(
            f"{n} {fmt(v)}" for n, v in cal["selection"].items()))


def _corruptions(table: dict, mode: str) -> None:
    sev = [str(s) for s in table["severities"]]
    ct = Table(title=f"Accuracy under corruption (%), lambda {mode}")
    ct.add_column("corruption")
    for s in sev:
        ct.add_column(f"s{s}", justify="right")
    ct.add_column("mean", justify="right")
    extra = ([("oracle", table["oracle"])] if "oracle" in table else []) + [
        (f"auto:{k}", v) for k, v in table.get("auto", {}).items()]
    for k, _ in extra:
        ct.add_column(f"{k} mean", justify="right")
    for name, per in table["accuracy"].items():
        row = [name] + [f"{100 * per[s]:.1f}" for s in sev] + [f"{100 * table['mean'][name]:.1f}"]
        row += [f"{100 * v['mean'][name]:.1f}" for _, v in extra]
        ct.add_row(*row)
    console.print(ct)
    console.print(f"mean accuracy {100 * table['mean_accuracy']:.2f}%, mean corruption error "
                  f"{100 * table['mean_corruption_error']:.2f}%")
    for k, v in extra:
        console.print(v.get("label", k))
    if table.get("protocol") and len(table["protocol"]["modes"]) > 1:
        _protocol(table["protocol"], mode)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _protocol(proto: dict, mode: str) -> None:
    fitted = ", ".join(proto["fitted"]) or "none of these"
    pt = Table(title=f"Test-time lambda: fitted on {', '.join(proto['fitted_on']) or '-'}; "
                     f"unseen here: {len(proto['unseen'])} corruption(s)")
    for col in ("mode", "clean", f"fitted ({fitted})", "unseen (mean)"):
        pt.add_column(col, justify="right")
    for key, m in proto["modes"].items():
        name = mode if key == "base" else key
        pt.add_row(name, _pct(m["clean"]), _pct(m["fitted"]), _pct(m["unseen"]))
    console.print(pt)
    if "oracle" in proto["modes"]:
        console.print("oracle: lambda chosen per corruption level on the test labels (an upper reference, "
                      "not deployable)")


def _sweep(sweep: dict) -> None:
    st = Table(title=f"Lambda sweep on {sweep['layer']} (trained {sweep['trained_lam']:g}): best lambda per level "
                     "(oracle: chosen on the test data)")
    for col in ("level", "best lambda", "accuracy at best", "accuracy as trained", "r(x)"):
        st.add_column(col, justify="right")
    grid = sweep["grid"]
    trained_idx = min(range(len(grid)), key=lambda i: abs(grid[i] - sweep["trained_lam"]))
    for name, per in sweep["accuracy"].items():
        for s, accs in per.items():
            level = name if s == "0" else f"{name} s{s}"
            st.add_row(level, f"{sweep['best_lam'][name][s]:g}", f"{100 * max(accs):.1f}",
                       f"{100 * accs[trained_idx]:.1f}", f"{sweep['r'][name][s]:.4g}")
    console.print(st)


# ----------------------------------------------------------------------------- inspect
def inspect(result: dict) -> None:
    card = result["card"]
    console.print(f"[bold]{result['model']}[/]: {card['arch']}, {card['parameters']:,} parameters, "
                  f"{len(card['csc_layers'])} CSC layer(s), {card['convs']} plain conv(s)")
    if card.get("training"):
        t = card["training"]
        console.print(f"training: {json.dumps({k: v for k, v in t.items() if not isinstance(v, (dict, list))})}")
    if card["csc_layers"]:
        table = Table(title="CSC layers")
        for col in ("layer", "in->out", "kernel/stride", "lambda", "K", "step t", "L", "atoms", "coherence", "unit norm"):
            table.add_column(col, justify="right")
        for c in card["csc_layers"]:
            table.add_row(c["name"], f"{c['in_channels']}->{c['out_channels']}",
                          f"{'x'.join(map(str, c['kernel_size']))}/{'x'.join(map(str, c['stride']))}",
                          f"{c['lam']:g}", str(c["steps"]),
                          f"{c['step_size']:.4g}" if c["step_size"] else "-", f"{c['lipschitz']:.4g}" if c["lipschitz"] else "-",
                          f"{c['dictionary_size']:,}",
                          f"{c['coherence']:.3f}" + (f" ({c['shift_coherence']:.3f} shifted)" if "shift_coherence" in c else ""),
                          "yes" if c["atoms_unit_norm"] else "NO")
        console.print(table)
    codes = result.get("codes")
    if codes:
        t = Table(title=f"Sparse codes on {codes['images']}")
        for col in ("layer", "non-zeros", "dead atoms", "relative recon. error", "gap at model K"):
            t.add_column(col, justify="right")
        for name, c in codes["layers"].items():
            rec = result["reconstruction"]["layers"][name]["relative_error"]
            gap = result["convergence"]["layers"][name]["gap_at_model_steps"]
            t.add_row(name, f"{100 * c['nonzero']:.1f}%", str(len(c["dead_atoms"])), f"{rec:.3f}", f"{gap:.2e}")
        console.print(t)
        sweep = result["sparsity_vs_lambda"]
        s = Table(title="Non-zero codes as lambda varies (x trained lambda)")
        s.add_column("layer")
        for scale in sweep["scales"]:
            s.add_column(f"x{scale:g}", justify="right")
        for name, values in sweep["layers"].items():
            s.add_row(name, *[f"{100 * v:.1f}%" for v in values])
        console.print(s)
    if result.get("pushback"):
        pb = result["pushback"]
        console.print("push-back to image space, relative error per depth: "
                      + ", ".join(f"{n} {e:.3f}" for n, e in list(pb["relative_error"].items())[:6])
                      + (" ..." if len(pb["relative_error"]) > 6 else ""))
    _notes_and_files(result, "images")


# ----------------------------------------------------------------------------- attack
def attack_cost(cost) -> None:
    """The estimate a run announces before it starts (an ``AttackCost`` event)."""
    minutes = cost.seconds / 60
    when = f"{cost.seconds:.0f} s" if minutes < 2 else (f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h")
    console.print(f"expected cost: {cost.gradient_passes:,} gradient and {cost.forward_passes:,} forward passes "
                  f"(per example, summed), about {when} on {cost.device}"
                  + (f" (preset {cost.preset})" if cost.preset else " -- --preset quick for a first look"),
                  highlight=False)


def attack(result: dict) -> None:
    t = result["threat"]
    if result["banner"]:
        console.print(f"[bold yellow]{result['banner']}[/]")
    console.print(f"[bold]{result['model']}[/] on {result['dataset']}, {result['n']} examples, {t['norm']} eps "
                  f"{t['eps']:.5g} ({t['eps'] * 255:.2f}/255), lambda {t['lambda']['mode']}")
    table = Table(title="Robust accuracy (95% Wilson interval)")
    for col in ("attack", "gradient mode", "accuracy", "95% CI"):
        table.add_column(col, justify="right")
    c = result["clean"]
    table.add_row("none (clean)", "-", f"{100 * c['accuracy']:.1f}%", _ci(c))
    for r in result["results"]:
        table.add_row(r["attack"], r["mode"], f"{100 * r['accuracy']:.1f}%", _ci(r))
    rb = result["robust"]
    table.add_row("[bold]worst case[/]", "all", f"[bold]{100 * rb['accuracy']:.1f}%[/]", _ci(rb))
    console.print(table)
    warn = False
    if result["sanity"]:
        st = Table(title="Sanity checks")
        for col in ("check", "verdict", "examples (allowed)", "detail"):
            st.add_column(col)
        for chk in result["sanity"]:
            colour = {"PASS": "green", "WARN": "red", "N/A": "dim"}[chk["verdict"]]
            warn |= chk["verdict"] == "WARN"
            counted = "-" if chk.get("changed") is None else (
                f"{chk['changed']}" + (f" / {chk['n']}" if chk.get("n") else "") + f" ({chk['allowed']})")
            st.add_row(chk["check"], f"[{colour}]{chk['verdict']}[/]", counted, chk["detail"])
        console.print(st)
    headline = f"robust accuracy {100 * rb['accuracy']:.1f}% ({_ci(rb)})"
    if warn:
        headline += " -- [red]possibly overestimated: a sanity check warned[/]"
    if result["config"].get("preset"):
        headline += f" -- preset {result['config']['preset']}: a first look, not a robustness claim"
    console.print(headline)
    if result.get("sweep"):
        sw = Table(title="Robust accuracy vs test-time lambda (PGD, worst case over gradient modes)")
        for col in ("lambda", "clean", "robust"):
            sw.add_column(col, justify="right")
        for row in result["sweep"]:
            sw.add_row(f"{row['lambda']:g}", f"{100 * row['clean']['accuracy']:.1f}%", f"{100 * row['robust']['accuracy']:.1f}%")
        console.print(sw)
    if result.get("examples"):
        console.print(f"wrote {result['examples']}")


# ----------------------------------------------------------------------------- export
def _shape(shape: list) -> str:
    return "[" + ", ".join(str(v) for v in shape) + "]"


def export(result: dict) -> None:
    spec = result["spec"]
    title = f"ONNX graph of {result['model']} ({spec['part']}, opset {spec['opset']})"
    table = Table(title=title)
    for col in ("", "name", "shape (float32)", "what it holds"):
        table.add_column(col, overflow="fold")
    for kind, ports in (("input", spec["inputs"]), ("output", spec["outputs"])):
        for port in ports:
            table.add_row(kind, port["name"], _shape(port["shape"]), port["doc"])
    console.print(table)
    if spec["lambda_mode"] == "auto":
        console.print(f"lambda: picked per image inside the graph by the {spec['rule']['rule']} rule "
                      f"({spec['rule']['formula']}, clamped to [{spec['rule']['lo']:g}, {spec['rule']['hi']:g}])")
    steps = spec["step_sizes"]
    if steps:
        c, h, w = spec["input_size"]
        console.print(f"step sizes: constants for {h}x{w} inputs, {len(steps)} CSC layer(s), "
                      f"t from {min(steps.values()):.4g} to {max(steps.values()):.4g}")
    check = result["check"]
    if check:
        ct = Table(title=f"csc vs onnxruntime on {check['on']}")
        classifier = any("top1_agreement" in row for row in check["rows"])
        for col in ("setting", "output", "max |diff|", "relative") + (("top-1 agreement",) if classifier else ()):
            ct.add_column(col, justify="right" if col not in ("setting", "output") else "left")
        for row in check["rows"]:
            for name, diff in row["outputs"].items():
                cells = [row["setting"], name, f"{diff['max_abs']:.2e}", f"{diff['max_rel']:.2e}"]
                if classifier:
                    cells.append(f"{100 * row['top1_agreement']:.1f}%" if name == "logits" else "-")
                ct.add_row(*cells)
        console.print(ct)
        verdict = "[green]within[/]" if check["passed"] else "[red]ABOVE[/]"
        console.print(f"largest relative difference {check['max_rel']:.2e}: {verdict} the tolerance "
                      f"{check['tolerance']:g} ({check['measure']})")
    for note in result["notes"]:
        console.print(f"note: {note}")
    console.print(f"wrote {result['out']} ({result['file_bytes'] / 1e6:.2f} MB) in {result['seconds']:.1f} s")


def curves(result: dict) -> None:
    """Training curves: per run, its last value of each plotted quantity, and the figures written."""
    runs = list(dict.fromkeys(run for panels in result["series"].values() for per in panels.values() for run in per))
    table = Table(title=f"Training curves: the last epoch of {len(runs)} run(s)")
    table.add_column("quantity")
    for run in runs:
        table.add_column(run, justify="right")
    for group, panels in result["series"].items():
        for name, per_run in panels.items():
            cells = []
            for run in runs:
                points = per_run.get(run)
                cells.append(f"{points['value'][-1]:.4g} (epoch {points['epoch'][-1]})" if points else "-")
            table.add_row(name, *cells)
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for path in result["images"]:
        console.print(f"wrote {path}")
