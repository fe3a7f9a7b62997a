"""Rows through Ray Serve: overhead of the gRPC proxy (3), batching within and across calls, and open-loop load
(4), cold start and the replica's memory (5), the peer APIs through the HTTP proxy (8). One session (`session`)
starts Ray Serve once for all of them, with the application twice: batching across calls on (SDXL_BATCH_CALLS=1,
the default) and off."""

from __future__ import annotations

import datetime
import itertools
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from random import Random
from typing import Any

from bench.harness import RssSampler, high_water_mark, interleave, log, mb, rate, seconds, speedup, summary, timed
from bench.workload import PROMPT, SEED, SERVE_STEPS
from stable_diffusion_xl.serving.client import grpc_call, task_input

APPLICATION = "users_bench_stable-diffusion-xl_v1"
ALONE = "users_bench_stable-diffusion-xl-alone_v1"  # the same, each call running alone (SDXL_BATCH_CALLS=0)
FAST = {"steps": SERVE_STEPS}


@dataclass
class Session:
    """A running Ray Serve with our application on the demo weights, and what the rows need of it."""

    channel: Any  # grpc channel to the gRPC proxy
    ports: Any
    engine: Any  # the in-process Engine, for the same generation without serving
    cold_start: dict  # launch to ready and to the first reply, timed while starting
    replica: Any = None  # psutil.Process of the ServeReplica, when found
    idle: dict | None = None  # memory of the replica and the whole stack before the rows ran
    driver: Any = None

    def direct(self, n: int = 1, seed: int = SEED):
        from stable_diffusion_xl.generation.request import TextToImageRequest

        return self.engine.generate([TextToImageRequest(prompt=PROMPT, seed=seed, n=n, steps=SERVE_STEPS)])

    def call(self, *inputs, application: str = APPLICATION):
        return grpc_call(self.channel, application, *inputs)


@contextmanager
def session(bench):
    """Starts Ray Serve, times launch to first reply, finds the replica; stops it all on leaving."""
    import grpc

    from stable_diffusion_xl.serving.local_serve import Application, serving

    bench.args.output.mkdir(parents=True, exist_ok=True)
    log_path = bench.args.output / f"{datetime.date.today().isoformat()}-serve.log"
    numbers = bench.results.setdefault("serving", {"steps": SERVE_STEPS, "log": str(log_path)})
    idle = None
    env = {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(bench.weights_root)}
    log("starting Ray Serve (Ray, dashboard, gRPC proxy, the replica loading the demo weights) ...")
    launched = time.perf_counter()
    apps = [Application(APPLICATION, env), Application(ALONE, {**env, "SDXL_BATCH_CALLS": "0", "SDXL_WARM_UP": "0"})]
    with serving(apps, log_path=log_path) as ports, \
            grpc.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        ready = time.perf_counter()
        first = grpc_call(channel, APPLICATION, task_input(PROMPT, seed=SEED, **FAST))
        answered = time.perf_counter()
        assert first[0]["data"]["choices"][0]["finish-reason"] == "success"
        cold = {"launch_to_ready_seconds": ready - launched,
                "launch_to_first_reply_seconds": answered - launched, "first_reply_seconds": answered - ready}
        log(f"  ready after {ready - launched:.1f} s, first reply after {answered - launched:.1f} s")
        driver, stack, replica = serving_processes(ports.grpc)
        if replica is None:
            log("  could not find the ServeReplica process: no RSS figures")
        else:
            numbers["replica"] = {"pid": replica.pid, "cmdline": " ".join(_cmdline(replica)).strip()}
            idle = {"replica_idle_bytes": replica.memory_info().rss,
                    "serving_stack_idle_bytes": total_rss([driver, *stack]), "serving_stack_processes": len(stack) + 1}
        yield Session(channel, ports, bench.engine, cold, replica, idle, driver)
        log("stopping Ray Serve ...")


# ------------------------------------------------------------------------------------------ 5. cold start

def cold_start(bench) -> dict:
    """Launching serving() (Ray, Serve, replica load + warm-up) to the first reply: timed by `session`."""
    return bench.serving.cold_start


def cold_start_lines(cold: dict, results: dict) -> list[tuple]:
    return [("cold start: launching serving() (Ray, Serve, replica load + warm-up) to the first reply",
             f"{cold['launch_to_first_reply_seconds']:.1f} s",
             f"launch to all RUNNING: {cold['launch_to_ready_seconds']:.1f} s; "
             f"first reply {cold['first_reply_seconds']:.2f} s", "one sample")]


# --------------------------------------------------------------------------------------------- 3. overhead

def overhead(bench) -> dict:
    """The same request through the gRPC proxy and on the Engine in process, interleaved."""
    from stable_diffusion_xl.serving.encoding import to_base64

    runs, serve = bench.args.serve_runs, bench.serving
    log(f"serving overhead: {runs} x (gRPC call, Engine.generate, Engine.generate + JPEG/base64), "
        f"steps={SERVE_STEPS}")
    serve.direct()  # warm-up of the in-process engine
    grpc_seconds, direct_seconds, encoded_seconds, replica_engine = [], [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        output = serve.call(task_input(PROMPT, seed=SEED, **FAST))[0]
        grpc_seconds.append(time.perf_counter() - started)
        replica_engine.append(sum(output["metadata"]["usage"]["seconds"].values()))
        direct_seconds.append(timed(serve.direct))
        encoded_seconds.append(timed(lambda: [to_base64(image) for image in serve.direct()[0].images]))
    return {"grpc": summary(grpc_seconds), "engine": summary(direct_seconds),
            "engine_plus_jpeg_base64": summary(encoded_seconds), "replica_engine_stages": summary(replica_engine),
            # Per request: end to end minus the stage seconds the replica's engine reports for it.
            "outside_replica_engine": summary([e2e - inside for e2e, inside in zip(grpc_seconds, replica_engine)])}


def overhead_lines(o: dict, results: dict) -> list[tuple]:
    added = (o["grpc"]["median"] - o["engine"]["median"]) * 1000
    return [
        (f"one request (steps={SERVE_STEPS}) end to end through Ray Serve's gRPC proxy vs in process, "
         f"{o['grpc']['n']} interleaved runs",
         seconds(o["grpc"], "ms"), f"Engine.generate in process: {seconds(o['engine'], 'ms')}; "
         f"+ JPEG/base64 in process: {seconds(o['engine_plus_jpeg_base64'], 'ms')}",
         f"{added:+.0f} ms, {o['grpc']['median'] / o['engine']['median']:.2f}× (gRPC / in process)"),
        ("the same gRPC requests, paired: end to end minus the replica's own engine time "
         "(= parse, JPEG/base64, Ray handle, gRPC proxy)",
         seconds(o["outside_replica_engine"], "ms"),
         f"engine stages the replica reports (usage.seconds): {seconds(o['replica_engine_stages'], 'ms')}",
         f"{o['outside_replica_engine']['median'] / o['grpc']['median'] * 100:.0f}% of end to end"),
    ]


# --------------------------------------------------------------------------------------------- 4. batching

def batching(bench) -> dict:
    """n=4 in one call, 4 task inputs in one call, 4 calls in sequence, 4 at once; Engine n=4 and four n=1."""
    rounds, serve = bench.args.batch_runs, bench.serving
    log(f"batching: {rounds} rounds of n=4 / 4 task inputs / 4 sequential calls / 4 concurrent calls")
    seeds = [SEED + i for i in range(4)]
    single = [task_input(PROMPT, seed=seed, **FAST) for seed in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        cases = {
            "n4_one_call": lambda: serve.call(task_input(PROMPT, seed=SEED, n=4, **FAST)),
            "four_inputs_one_call": lambda: serve.call(*single),
            "four_calls_sequential": lambda: [serve.call(item) for item in single],
            "four_calls_concurrent": lambda: list(pool.map(serve.call, single)),
            "engine_n4": lambda: serve.direct(n=4),
            "engine_four_n1": lambda: [serve.direct(seed=seed) for seed in seeds],
        }
        warm = {name: run() for name, run in cases.items()}  # warm-up, and a check that 4 images come back
        assert len(warm["n4_one_call"][0]["data"]["choices"]) == 4 and len(warm["four_inputs_one_call"]) == 4
        times = interleave(cases, rounds, label="round")
    return {name: {"seconds": summary(values), "images_per_second": summary([4 / v for v in values])}
            for name, values in times.items()}


def batching_lines(b: dict, results: dict) -> list[tuple]:
    return [
        (f"n=4 in one call (gRPC, steps={SERVE_STEPS}), {b['n4_one_call']['seconds']['n']} rounds",
         rate(b["n4_one_call"]["images_per_second"]),
         f"four n=1 calls in sequence: {rate(b['four_calls_sequential']['images_per_second'])}",
         speedup(b["n4_one_call"], b["four_calls_sequential"], "n=4 / sequential")),
        ("four task inputs (n=1) in one CallRequest", rate(b["four_inputs_one_call"]["images_per_second"]),
         "four n=1 calls in sequence", speedup(b["four_inputs_one_call"], b["four_calls_sequential"],
                                                "one call / sequential")),
        ("four n=1 calls at once (4 client threads)", rate(b["four_calls_concurrent"]["images_per_second"]),
         "the same four in sequence", speedup(b["four_calls_concurrent"], b["four_calls_sequential"],
                                               "concurrent / sequential")),
        ("in process: Engine.generate n=4", rate(b["engine_n4"]["images_per_second"]),
         f"four Engine.generate n=1: {rate(b['engine_four_n1']['images_per_second'])}",
         speedup(b["engine_n4"], b["engine_four_n1"], "n=4 / four n=1")),
    ]


# --------------------------------------------------------------------------- 4. batching across calls

CALLERS = (1, 4, 8)
ARRIVAL_SEED, LOAD_CALLS, LOAD_SHARES = 20261208, 24, (0.5, 0.8, 1.0)  # open-loop load: shares of saturation


def across_calls(bench) -> dict:
    """k concurrent n=1 callers with batching across calls on and off, one call of k task inputs, and the same k
    calls in sequence, for k in CALLERS, all interleaved round by round; k=1 concurrent is an idle call."""
    rounds, serve = bench.args.batch_runs, bench.serving
    log(f"batching across calls: {rounds} rounds of {', '.join(map(str, CALLERS))} callers, on and off")
    cases = {}
    with ThreadPoolExecutor(max_workers=max(CALLERS)) as pool:
        for k in CALLERS:
            single = [task_input(PROMPT, seed=SEED + i, **FAST) for i in range(k)]
            cases |= {
                f"{k}_concurrent_on": lambda single=single: list(pool.map(serve.call, single)),
                f"{k}_concurrent_off": lambda single=single: list(pool.map(
                    lambda one: serve.call(one, application=ALONE), single)),
                f"{k}_inputs_one_call": lambda single=single: serve.call(*single),
                f"{k}_sequential": lambda single=single: [serve.call(one) for one in single],
            }
        for run in cases.values():  # warm-up, both replicas
            run()
        times = interleave(cases, rounds, label="round")
    numbers = {name: summary(values) for name, values in times.items()}
    numbers["load"] = open_loop(serve, numbers)
    return numbers


def open_loop(serve, numbers: dict) -> dict:
    """Poisson arrivals (a fixed seed) of LOAD_CALLS n=1 calls at shares of the saturation rate (8 concurrent
    callers' images per second, batching on), on and off: throughput and latency percentiles."""
    saturation = max(CALLERS) / numbers[f"{max(CALLERS)}_concurrent_on"]["median"]
    load = {"saturation_calls_per_second": saturation}
    for share in LOAD_SHARES:
        random = Random(ARRIVAL_SEED)
        arrivals = list(itertools.accumulate(random.expovariate(share * saturation) for _ in range(LOAD_CALLS)))
        for mode, application in (("on", APPLICATION), ("off", ALONE)):
            latencies, elapsed = arriving(serve, application, arrivals)
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            load[f"{share}_{mode}"] = {"calls_per_second": LOAD_CALLS / elapsed, "p50": cuts[49], "p95": cuts[94],
                                       "p99": cuts[98]}
            log(f"  open loop at {share:.0%} of saturation, batching {mode}: p50 {cuts[49]:.2f} s, "
                f"p95 {cuts[94]:.2f} s, {LOAD_CALLS / elapsed:.2f} calls/s")
    return load


def arriving(serve, application: str, arrivals: list[float]) -> tuple[list[float], float]:
    """n=1 calls sent at `arrivals` (seconds from now), whether or not earlier ones were answered: each one's
    latency, and the seconds until the last was answered."""
    started = time.perf_counter()

    def one(index: int) -> float:
        time.sleep(max(0.0, arrivals[index] - (time.perf_counter() - started)))
        sent = time.perf_counter()
        serve.call(task_input(PROMPT, seed=SEED + index, **FAST), application=application)
        return time.perf_counter() - sent

    with ThreadPoolExecutor(max_workers=len(arrivals)) as pool:
        latencies = list(pool.map(one, range(len(arrivals))))
    return latencies, time.perf_counter() - started


def across_call_lines(a: dict, results: dict) -> list[tuple]:
    lines = []
    for k in CALLERS:
        on, off = a[f"{k}_concurrent_on"], a[f"{k}_concurrent_off"]
        if k == 1:
            lines.append(("one idle call (gRPC, steps=5), batching across calls on", seconds(on, "ms"),
                          f"off: {seconds(off, 'ms')}", f"{on['median'] / off['median']:.2f}× (on / off)"))
            continue
        one_call = a[f"{k}_inputs_one_call"]
        lines.append((f"{k} concurrent n=1 calls, batching across calls on, {on['n']} rounds", seconds(on),
                      f"off: {seconds(off)}; one call of {k} task inputs: {seconds(one_call)}; {k} in sequence: "
                      f"{seconds(a[f'{k}_sequential'])}",
                      f"{on['median'] / one_call['median']:.2f}× (on / one call), "
                      f"{off['median'] / on['median']:.2f}× (off / on)"))
    load = a["load"]
    for share in LOAD_SHARES:
        on, off = load[f"{share}_on"], load[f"{share}_off"]
        lines.append((f"open-loop load, Poisson arrivals at {share:.0%} of saturation "
                      f"({share * load['saturation_calls_per_second']:.1f} calls/s), {LOAD_CALLS} calls",
                      f"on: p50 {on['p50']:.2f} s, p95 {on['p95']:.2f} s, p99 {on['p99']:.2f} s, "
                      f"{on['calls_per_second']:.2f} calls/s",
                      f"off: p50 {off['p50']:.2f} s, p95 {off['p95']:.2f} s, p99 {off['p99']:.2f} s, "
                      f"{off['calls_per_second']:.2f} calls/s",
                      f"p95 {on['p95'] / off['p95']:.2f}× (on / off)"))
    return lines


# ------------------------------------------------------------------------------------------- 8. peer APIs

# The same request (prompt, seed, steps, 1:1, one JPEG) in each HTTP dialect: path -> body.
PEER_REQUESTS = {
    "": {"prompt": PROMPT, "seed": SEED, "steps": SERVE_STEPS},
    "v1/images/generations": {"prompt": PROMPT, "seed": SEED, "steps": SERVE_STEPS, "output_format": "jpeg"},
    "score": {"input_data": {"data": [PROMPT]}, "parameters": {"seed": SEED, "num_inference_steps": SERVE_STEPS}},
    "predictions": {"input": {"prompt": PROMPT, "seed": SEED, "num_inference_steps": SERVE_STEPS}},
    "predict": {"prompt": PROMPT, "seed": SEED, "num_inference_steps": SERVE_STEPS},
}


def peer_apis(bench) -> dict:
    """Seconds per request through Ray Serve's HTTP proxy, each dialect in turn, rounds interleaved."""
    import urllib.request

    runs, port = bench.args.serve_runs, bench.serving.ports.http
    log(f"peer APIs: {runs} rounds of the same request through each HTTP dialect, steps={SERVE_STEPS}")

    def post(path: str) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{APPLICATION}/{path}",
                                         data=json.dumps(PEER_REQUESTS[path]).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status == 200
            response.read()

    posts = {path: lambda path=path: post(path) for path in PEER_REQUESTS}
    for run in posts.values():  # warm-up
        run()
    times = interleave(posts, runs, label="round", show=lambda s: f"{s * 1000:.0f} ms")
    return {path or "instill-http": summary(values) for path, values in times.items()}


def peer_api_lines(apis: dict, results: dict) -> list[tuple]:
    instill = apis["instill-http"]
    peers = {path: value for path, value in apis.items() if path != "instill-http"}
    return [(f"peer APIs through the HTTP proxy, the same request (steps={SERVE_STEPS}), {instill['n']} interleaved "
             "rounds", f"Instill HTTP: {seconds(instill, 'ms')}",
             "; ".join(f"{path}: {seconds(value, 'ms')}" for path, value in peers.items()),
             ", ".join(f"{(value['median'] - instill['median']) * 1000:+.0f} ms" for value in peers.values())
             + " (each - Instill)")]


# ----------------------------------------------------------------------------------------- 5. replica memory

def memory(bench) -> dict | None:
    """Peak RSS of the replica during a default request (40 steps) and an n=4 one. Sampled only now, last, so that
    the sampling thread cannot slow the timed rows."""
    serve = bench.serving
    log("replica memory: one default 40-step request and one n=4 request, RSS sampled every 5 ms")
    if serve.replica is None:
        return None
    sampler = RssSampler(serve.replica)
    sampler.start()
    sampler.phase = "default request, 40 steps"
    serve.call(task_input(PROMPT, seed=SEED))
    sampler.phase = "n=4, 40 steps"
    serve.call(task_input(PROMPT, seed=SEED, n=4))
    sampler.phase = "after"
    sampler.stop()
    return {**serve.idle, "replica_peak_bytes_by_phase": sampler.peaks,
            "replica_peak_bytes": max(sampler.peaks.values()),
            "replica_vmhwm_bytes": high_water_mark(serve.replica.pid),
            "serving_stack_after_bytes": total_rss([serve.driver, *serve.driver.children(recursive=True)])}


def memory_lines(rss: dict, results: dict) -> list[tuple]:
    hwm = f"; kernel peak (VmHWM) {mb(rss['replica_vmhwm_bytes'])}" if rss.get("replica_vmhwm_bytes") else ""
    return [("replica peak RSS during a 40-step and an n=4 request (psutil, every 5 ms)",
             mb(rss["replica_peak_bytes"]),
             f"replica idle after load: {mb(rss['replica_idle_bytes'])}{hwm}; whole Ray Serve stack "
             f"({rss['serving_stack_processes']} processes): {mb(rss['serving_stack_after_bytes'])}", "demo weights")]


def serving_processes(grpc_port: int):
    """Our serving session's driver process (found by its gRPC port) and the Ray replica under it."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "stable_diffusion_xl.serving.local_serve" in cmdline and f'"grpc": {grpc_port}' in cmdline:
            descendants = process.children(recursive=True)
            replicas = [p for p in descendants if "ServeReplica" in " ".join(_cmdline(p)) and APPLICATION in
                        " ".join(_cmdline(p))]
            return process, descendants, (replicas[0] if replicas else None)
    return None, [], None


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def total_rss(processes) -> int:
    import psutil

    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total
