"""The sweep command's config: distill's flags plus the grid of T, alpha and seeds."""

from __future__ import annotations

from dataclasses import dataclass, fields

from kdistill.config.common import _check, _opt, parse_floats
from kdistill.config.distill import DistillConfig


@dataclass
class SweepConfig(DistillConfig):
    """Distil once per (temperature, alpha) pair, reusing the teacher's logits, and name the best:
    sweep.json and a heatmap of validation accuracy over T x alpha. Takes every distill flag."""

    temperature: str = _opt(  # type: ignore[assignment]
        "2,3,4", "Comma-separated temperatures T > 0 to try."
    )
    alpha: str = _opt(  # type: ignore[assignment]
        "0.5,0.7,0.9", "Comma-separated alphas in [0, 1] to try."
    )
    output_dir: str = _opt(
        "outputs/sweeps",
        "Parent folder: the sweep gets <dataset>_sweep_<YYYYMMDD_HHMMSS>/ with one run per "
        "grid point inside.",
    )
    lockstep: str = _opt(
        "auto",
        "Train the grid's students together over the same batches, their weights stacked, so "
        "each step does every point's work in one launch per operator; every point still gets "
        "its own run folder, clipping, best epoch and models. auto: where it fits in memory and "
        "the options allow it (else the points train in turn, with a warning saying why); on: "
        "always, an error where the options do not allow it; off: one point after another.",
        choices=["auto", "on", "off"],
    )

    def __post_init__(self) -> None:
        _check(
            self.push_to_hub is None,
            "--push-to-hub: a sweep trains one student per grid "
            "point; rerun the best point with distill --push-to-hub, or upload its best_model/ "
            "with `hf upload`",
        )
        for t in self.temperature_list():
            _check(t > 0, f"--temperature values must be > 0 (got {t})")
        for a in self.alpha_list():
            _check(0.0 <= a <= 1.0, f"--alpha values must be in [0, 1] (got {a})")
        _check(
            not (self.resume or self.resume_from),
            "--resume and --resume-from continue one distill run; resume a sweep's unfinished "
            "point with kdistill distill --resume-from <its run directory>",
        )
        self.run_config(self.temperature_list()[0], self.alpha_list()[0])  # the other ranges

    def temperature_list(self) -> list[float]:
        return parse_floats(str(self.temperature), "--temperature")

    def alpha_list(self) -> list[float]:
        return parse_floats(str(self.alpha), "--alpha")

    def run_config(
        self,
        temperature: float,
        alpha: float,
        output_dir: str | None = None,
        seed: int | None = None,
    ) -> DistillConfig:
        """The distill config of one grid point."""
        values = {f.name: getattr(self, f.name) for f in fields(DistillConfig)}
        values.update(
            temperature=temperature, alpha=alpha, output_dir=output_dir or self.output_dir
        )
        # A grid's temperatures are chosen, not defaults: the no-label recipe keeps off them.
        values["no_label_recipe"] = "off"
        if seed is not None:  # one run of --seeds: it is the run --seed <seed> makes
            values.update(seed=seed, seeds=None)
        return DistillConfig(**values)
