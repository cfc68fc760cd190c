"""The shipped GitOps health checks, run as their tools run them: Argo CD's Lua (Lua 5.1 via lupa, as Argo CD's
gopher-lua) and Flux's healthCheckExprs (CEL via cel-python, evaluated inProgress, failed, current in turn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import lupa.lua51 as lua51
import yaml

GITOPS = Path(__file__).resolve().parent.parent / "examples" / "gitops"
ARGO_KEY = "resource.customizations.health.kubetune.dev_FineTuneJob"


def argocd_script() -> str:
    config_map = yaml.safe_load((GITOPS / "argocd-cm.yaml").read_text())
    return str(config_map["data"][ARGO_KEY])


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would show them for this FineTuneJob."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{argocd_script()}\nend")
    result = check(lua.table_from(obj, recursive=True))
    return str(result["status"]), str(result["message"])


def flux_checks() -> dict[str, str]:
    kustomization = yaml.safe_load((GITOPS / "flux-kustomization.yaml").read_text())
    (check,) = [c for c in kustomization["spec"]["healthCheckExprs"] if c["kind"] == "FineTuneJob"]
    return {key: check[key] for key in ("inProgress", "failed", "current") if key in check}


def flux_health(obj: dict[str, Any]) -> str:
    """InProgress, Failed or Current: the first expression that holds, in Flux's order; none holding is InProgress."""
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(obj.get(key, {})) for key in ("metadata", "spec", "status")}
    for state, expression in (("InProgress", "inProgress"), ("Failed", "failed"), ("Current", "current")):
        source = flux_checks().get(expression)
        if source and bool(env.program(env.compile(source)).evaluate(activation)):
            return state
    return "InProgress"
