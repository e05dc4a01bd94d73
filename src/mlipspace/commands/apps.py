"""The typer applications every command module registers on (kept apart from cli.py to avoid cycles)."""

import typer

app = typer.Typer(
    name="mlipspace",
    help="Open up universal machine-learning interatomic potentials and compare their latent features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and export datasets (paths, globs, builtin:NAME).", no_args_is_help=True)
store_app = typer.Typer(help="Inspect a feature store.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")
env_app = typer.Typer(help="Per-family Python environments for checkpoint models (MACE, PET, UMA, ...).",
                      no_args_is_help=True)
app.add_typer(env_app, name="env")

#: Where a dataset's DFT labels are (every command that reads structures takes both).
ENERGY_KEY = typer.Option(None, "--energy-key", help="info key of the total energy (or 'calculator'); default: "
                          "'energy', then the ASE calculator, then 'REF_energy' (MACE layout).")
FORCES_KEY = typer.Option(None, "--forces-key", help="arrays key of the forces (or 'calculator'); default: "
                          "'forces', then the ASE calculator, then 'REF_forces'.")
