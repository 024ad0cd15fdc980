"""`make demo`: the whole product on this machine, no GPU, no Docker, no downloads.

1. On the real control plane (`make cluster-up`): run the operator, apply the examples, show the GPU
   plan, the RayService/Ingress it creates, honest status (KubeRay's part is simulated by patching
   RayService status, as the integration tests do), and a FineTuneJob finishing on a fake GPU node.
2. Locally: serve the tiny CPU example through the same Ray Serve application and print a real chat
   completion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kuberay_standin import kuberay_serving_status  # noqa: E402

KUBECONFIG = REPO / ".cluster" / "kubeconfig"
NAMESPACE = "bigmodel-demo"
GROUP, VERSION = "bigmodel.io", "v1alpha1"
LLAMA_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
    "rope_theta": 500000.0,
}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def wait(fn: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := fn():
            return result
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def kubectl(*args: str) -> str:
    from glob import glob

    found = sorted(glob(str(Path.home() / ".cache/bigmodel/k8s/kubernetes-*/bin/kubectl")))
    binary = found[-1] if found else "kubectl"
    proc = subprocess.run([binary, f"--kubeconfig={KUBECONFIG}", *args], capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr


def cluster_part() -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        core.delete_namespace(NAMESPACE)
        wait(lambda: _gone(core, NAMESPACE), "the old demo namespace to go", timeout=120)
    except ApiException as error:
        if error.status != 404:
            raise
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    wait(lambda: _has_default_sa(core), "the namespace's default ServiceAccount")
    for name, key, value in (("hf-token", "token", "hf_demo_not_real"), ("llm-api-keys", "keys", "sk-demo\n")):
        core.create_namespaced_secret(
            NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={key: value})
        )
    core.create_namespaced_config_map(
        NAMESPACE,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="llama-3-1-8b-config"), data={"config.json": json.dumps(LLAMA_8B_CONFIG)}
        ),
    )

    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "BIGMODEL_OFFLINE": "1"}
    log = (REPO / ".cluster" / "logs" / "demo-operator.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "bigmodel_operator.cli", "operator", "-n", NAMESPACE],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _bigmodel_story(custom, client.NetworkingV1Api(api))
        _finetune_story(custom)
    finally:
        operator.terminate()
        operator.wait(timeout=30)


def _gone(core: Any, name: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        core.read_namespace(name)
    except ApiException as error:
        return error.status == 404
    return False


def _has_default_sa(core: Any) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        core.read_namespaced_service_account("default", NAMESPACE)
    except ApiException:
        return False
    return True


def _cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def _bigmodel_story(custom: Any, networking: Any) -> None:
    body = yaml.safe_load((REPO / "docs/examples/bigmodel-llama-3.1-8b.yaml").read_text())
    body["spec"]["model"]["configMapRef"] = {"name": "llama-3-1-8b-config"}
    say("kubectl apply -f docs/examples/bigmodel-llama-3.1-8b.yaml (config.json from a ConfigMap)")
    start = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "bigmodels", body)
    rs = wait(lambda: _get(custom, "ray.io", "v1", "rayservices", "llama-3-1-8b"), "the RayService")
    print(f"RayService created {time.monotonic() - start:.2f}s after the BigModel")
    bm = wait(
        lambda: (
            (b := _get(custom, GROUP, VERSION, "bigmodels", "llama-3-1-8b"))
            and (b.get("status") or {}).get("plan")
            and b
        ),
        "the plan",
    )
    print("status.plan:", bm["status"]["plan"]["summary"])
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    print(
        "GPU worker group:",
        {k: worker[k] for k in ("groupName", "minReplicas", "maxReplicas")},
        worker["template"]["spec"]["containers"][0]["resources"]["limits"],
    )
    print("Ready:", _cond(bm, "Ready").get("reason"), "-", _cond(bm, "Ready").get("message"))
    say("KubeRay reports the Serve application RUNNING (simulated) and the ingress controller assigns an address")
    custom.patch_namespaced_custom_object_status(
        "ray.io", "v1", NAMESPACE, "rayservices", "llama-3-1-8b", {"status": kuberay_serving_status("llama-3-1-8b")}
    )
    wait(lambda: networking.read_namespaced_ingress("llama-3-1-8b", NAMESPACE), "the Ingress")
    networking.patch_namespaced_ingress_status(
        "llama-3-1-8b", NAMESPACE, {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
    )
    wait(
        lambda: _cond(_get(custom, GROUP, VERSION, "bigmodels", "llama-3-1-8b"), "Ready").get("status") == "True",
        "Ready",
    )
    print(kubectl("get", "bigmodels", "-n", NAMESPACE))
    say("a model too large for its GPUs is refused before any GPU is requested")
    big = yaml.safe_load((REPO / "docs/examples/bigmodel-tiny-cpu.yaml").read_text())
    big["metadata"]["name"] = "llama-70b-on-l4"
    big["spec"] = {
        "model": {
            "uri": "pvc://models/llama-70b",
            "config": {
                **LLAMA_8B_CONFIG,
                "hidden_size": 8192,
                "intermediate_size": 28672,
                "num_hidden_layers": 80,
                "num_attention_heads": 64,
            },
        },
        "resources": {"gpu": {"product": "NVIDIA-L4", "count": 2}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "bigmodels", big)
    refused = wait(
        lambda: (
            (b := _get(custom, GROUP, VERSION, "bigmodels", "llama-70b-on-l4"))
            and _cond(b, "Ready").get("reason") == "ModelTooLargeForGPU"
            and b
        ),
        "ModelTooLargeForGPU",
    )
    print("Ready=False", _cond(refused, "Ready")["reason"], "-", _cond(refused, "Ready")["message"])
    print(kubectl("get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.kind=BigModel"))


def _finetune_story(custom: Any) -> None:
    body = yaml.safe_load((REPO / "docs/examples/finetunejob-lora.yaml").read_text())
    spec = body["spec"]
    spec["dataset"]["uri"] = "file:///data/chats.jsonl"  # the demo cluster has no storage for PVCs
    spec["output"]["uri"] = "file:///output/support-bot-v1"
    say("kubectl apply -f docs/examples/finetunejob-lora.yaml (KWOK plays the GPU node and finishes the pod)")
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs", body)
    wait(
        lambda: (
            (_get(custom, GROUP, VERSION, "finetunejobs", "support-bot-v1").get("status") or {}).get("phase")
            == "Succeeded"
        ),
        "the FineTuneJob to succeed",
        timeout=120,
    )
    print(kubectl("get", "finetunejobs,jobs,pods", "-n", NAMESPACE, "-o", "wide"))


def _get(custom: Any, group: str, version: str, plural: str, name: str) -> Any:
    from kubernetes.client.rest import ApiException

    try:
        return custom.get_namespaced_custom_object(group, version, NAMESPACE, plural, name)
    except ApiException as error:
        if error.status == 404:
            return {}
        raise


def local_part() -> None:
    import tempfile

    import httpx

    from bigmodel_operator.local import local_application
    from bigmodel_serving.local import run_local
    from bigmodel_training.tinymodel import make_tiny_model

    manifest = yaml.safe_load((REPO / "docs/examples/bigmodel-tiny-cpu.yaml").read_text())
    say("bigmodel serve docs/examples/bigmodel-tiny-cpu.yaml (tiny random Llama, generated offline)")
    # The example names the path the CPU image bakes the model at; locally any directory will do.
    model_dir = Path.home() / ".cache" / "bigmodel" / "demo" / "tiny-llama"
    make_tiny_model(model_dir)
    manifest["spec"]["model"]["uri"] = model_dir.as_uri()
    keys_dir = tempfile.mkdtemp(prefix="bigmodel-demo-keys-")
    (Path(keys_dir) / "demo").write_text("demo-key")  # a key named "demo"; /v1/* without it gets 401
    server = run_local(local_application(manifest, keys_dir), port=8765, block=False)
    try:
        request = {
            "model": "tiny-llama",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello to the operator."}],
        }
        headers = {"Authorization": "Bearer demo-key"}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=request, headers=headers, timeout=120)
        print("POST /v1/chat/completions ->", response.status_code)
        print(json.dumps(response.json(), indent=2))
    finally:
        server.shutdown()


def main() -> int:
    if not KUBECONFIG.exists():
        print("demo: no cluster: run `make cluster-up` first (or `make demo`)", file=sys.stderr)
        return 2
    cluster_part()
    local_part()
    say("done — `make cluster-down` stops the control plane")
    return 0


if __name__ == "__main__":
    sys.exit(main())
