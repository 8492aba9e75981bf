"""The demo's training recipes: which one this machine gets, and what each reached when measured.

The recipe is chosen by what the trainer's `precision: auto` picks here (trainer.runtime): a GPU, or a
CPU with AMX bf16, trains the whole train split in the demo's time; any other CPU trains in fp32 at
roughly half the speed and gets a smaller recipe that fits the same time. Every figure below was
measured, on the machine and with the command docs/RESULTS.md ("Demo model") names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    train_samples: int | None  # None: the whole train split (22,500 reviews after the validation hold-out)
    why: str  # why this machine gets it
    measured: str  # what it reached when measured: accuracy, time, machine

    @property
    def samples_text(self) -> str:
        return "the whole train split" if self.train_samples is None else f"{self.train_samples:,} reviews"


# Both: 1 epoch at 128 word pieces (head+tail), batch 32, lr 1e-4, warmup 6%, no dropout.
FAST = Recipe(
    name="full split, bf16",
    train_samples=None,
    why="this machine trains in bf16 (a GPU, or a CPU with AMX)",
    measured=(
        "reached 90.60% on all 25,000 test reviews (the served int8 model; PyTorch 90.57%) after 8.0 min of "
        "training at 46.9 samples/s on a 2-core Intel Xeon with AMX (2026-12-02)"
    ),
)
SMALL = Recipe(
    name="small, fp32",
    train_samples=10_000,
    why="this CPU has no fast bf16 (no AMX): fp32 trains at about half the speed",
    measured=(
        "reached 89.02% on all 25,000 test reviews (the served int8 model) after 7.5 min of fp32 training at "
        "22.2 samples/s on a 2-core Intel Xeon (2026-12-02); a slower CPU takes longer"
    ),
)


def choose(precision: str) -> Recipe:
    """The recipe for the precision the trainer resolves `auto` to on this machine."""
    return SMALL if precision == "fp32" else FAST


def machine_precision() -> str:
    """What `precision: auto` resolves to here (imports torch: a second or two)."""
    from trainer.runtime import resolve_device, resolve_precision

    name, _ = resolve_precision("auto", resolve_device("auto"))
    return name
