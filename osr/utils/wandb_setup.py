"""W&B must never block on a login: without credentials it runs offline."""

import netrc
import os
from pathlib import Path


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(Path(os.environ.get("NETRC", Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].rstrip("/")
    return rc.authenticators(host) is not None


def prepare_wandb() -> None:
    """Offline mode unless a key is available or the user chose a mode."""
    if "WANDB_MODE" not in os.environ and not has_wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()
