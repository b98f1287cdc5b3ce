"""What a replica spec sent over the admin API may ask for, beyond what shipyard.yaml may.

The config file is the operator's; the admin API is reachable over the network with a key. So a
spec from the API:
- `engine: launch` runs only the known servers with their own programs (no `executable`), in an
  environment that sets device and thread placement only: anything else could make the server run
  code of the caller's choosing (BASH_ENV, LD_PRELOAD, PYTHONSTARTUP, PYTHONPATH, ...). Whether
  launching is allowed at all is the server's switch (`server.api_launch`, off by default).
- an upstream's key comes from a variable named `SHIPYARD_UPSTREAM_*`: otherwise a spec pointing
  at a server of the caller's could read any of the gateway's secrets out of its environment (the
  admin key, a cloud credential).
Upstream URLs are http(s) for every spec (the config's own validator).
"""

from __future__ import annotations

from shipyard.engines.launch import LaunchConfig

ENV_ALLOWED = frozenset({"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                         "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM"})
KEY_ENV_PREFIX = "SHIPYARD_UPSTREAM_"


def check_api_spec(spec) -> None:
    """ValueError naming what an API-sent replica spec may not ask for."""
    if isinstance(spec, LaunchConfig):
        if spec.executable is not None:
            raise ValueError("executable: a replica added over the API runs its kind's own program; name another "
                             "one in shipyard.yaml")
        refused = sorted(name for name in spec.env if name not in ENV_ALLOWED)
        if refused:
            raise ValueError(f"env: {', '.join(refused)[:200]} may not be set over the API (allowed: "
                             f"{', '.join(sorted(ENV_ALLOWED))})")
    key_env = getattr(spec, "api_key_env", None)
    if key_env is not None and not key_env.startswith(KEY_ENV_PREFIX):
        raise ValueError(f"api_key_env: over the API, an upstream's key is read from a {KEY_ENV_PREFIX}* variable")
