"""The inference process against plain transformers generate(), side by side on n3-tiny, in one run.

    .venv/bin/python bench/serve_bench.py                     # about a minute
    .venv/bin/python bench/serve_bench.py --requests 192 --max-tokens 64 --threads 2

A throwaway site (tests/sites.py) with a trained version whose policy/ is n3-tiny (the built-in 4-layer model
from MODELS_DIR/_base), served by a real ``manage.py serve_policies`` on 127.0.0.1 and driven by the official
``openai`` client; the plain side loads the same directory in this process. Both greedy, the same prompts through
the same format_query, ``--max-tokens`` (32) new tokens each whatever EOS says (``ignore_eos``, as serving
benchmarks do: every request does the same work), torch on ``--threads`` threads each (OMP_NUM_THREADS). Plain and
served requests are taken in turns, so other work on the machine weighs on both alike.

- single-client latency: median time of one completion, sequential, the server's over plain generate()'s
  (target <= 1.15x): HTTP, JSON, token auth and the hop to the generation thread are the difference
- throughput: ``--clients`` (8) concurrent clients against sequential plain generate() (target >= 3x): the server
  batches concurrent requests to one version into one generate()
- the resident memory one loaded version adds to the server process (its RSS before and after the first request),
  and what a second version adds beside it
- the same with answers that end at EOS as the model chooses (about 7 tokens on n3-tiny), in the notes: there the
  fixed cost of a request (HTTP, JSON, the client) weighs more than on 32 tokens
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from _common import Figure, print_table, throwaway_site
from transformers import AutoModelForCausalLM, GenerationConfig

from n3_server.rlhf.base_models import load_tokenizer, resolve_base_model
from n3_server.rlhf.data import format_query
from tests.inference.test_inference import SERVE_PERMS, Served, deploy, serve

TARGET_LATENCY_RATIO = 1.15
TARGET_THROUGHPUT_RATIO = 3.0
PROMPTS = [f"What is {a} plus {b}?" for a in range(1, 9) for b in range(1, 4)]


def plain_generate(model, tokenizer, prompt: str, config: GenerationConfig) -> tuple[str, int]:
    inputs = tokenizer(format_query(prompt), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


@dataclass
class Run:
    plain_times: list[float]
    served_times: list[float]
    plain_rate: float
    concurrent_rate: float
    batches: int
    tokens: int
    same_sequential: int
    same_batched: int

    @property
    def latency_ratio(self) -> float:
        return statistics.median(self.served_times) / statistics.median(self.plain_times)

    @property
    def throughput_ratio(self) -> float:
        return self.concurrent_rate / self.plain_rate


def measure(server: Served, token: str, model, tokenizer, prompts: list[str], args: argparse.Namespace, *,
            ignore_eos: bool) -> Run:
    """Plain generate() in this process, then the server: one client, then ``args.clients`` at once."""
    config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=None if ignore_eos else tokenizer.eos_token_id)
    clients = [server.client(token) for _ in range(args.clients)]

    def ask(i: int) -> str:
        answer = clients[i % args.clients].completions.create(
            model="bot", prompt=prompts[i], max_tokens=args.max_tokens, temperature=0,
            extra_body={"ignore_eos": ignore_eos})
        return answer.choices[0].text

    for i in range(3):  # warm up (the first call loads the version)
        plain_generate(model, tokenizer, prompts[i], config)
        ask(i)
    # Taken in turns, one plain then one served: other work on the machine weighs on both alike.
    plain_times, plain_out, served_times, served_out, tokens = [], [], [], [], 0
    for i, prompt in enumerate(prompts):
        started = time.perf_counter()
        text, n = plain_generate(model, tokenizer, prompt, config)
        plain_times.append(time.perf_counter() - started)
        plain_out.append(text)
        tokens += n
        started = time.perf_counter()
        served_out.append(ask(i))
        served_times.append(time.perf_counter() - started)
    generates = server.get("/n3/stats", token)["generates"]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        concurrent_out = list(pool.map(ask, range(len(prompts))))
    concurrent_rate = len(prompts) / (time.perf_counter() - started)
    return Run(plain_times=plain_times, served_times=served_times, plain_rate=len(prompts) / sum(plain_times),
               concurrent_rate=concurrent_rate, batches=server.get("/n3/stats", token)["generates"] - generates,
               tokens=tokens, same_sequential=sum(a == b for a, b in zip(served_out, plain_out)),
               same_batched=sum(a == b for a, b in zip(concurrent_out, plain_out)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=96, help="requests per measurement (96)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput (8)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens / max_new_tokens (32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side (1)")
    parser.add_argument("--batch-wait-ms", type=float, default=None,
                        help="the server's N3_SERVE_BATCH_WAIT_MS (default: the setting's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]

    with throwaway_site("serve") as site:
        resolve_base_model("n3-tiny", models_dir=site.models_dir)  # built once, cached in MODELS_DIR/_base
        deploy(site, versions=(1, 2), base="n3-tiny")  # v2: the same weights again, for a second version's memory
        token = site.api_token("bench", SERVE_PERMS)
        policy = site.models_dir / "bot" / "v1" / "policy"
        model = AutoModelForCausalLM.from_pretrained(policy).eval()
        model.generation_config = GenerationConfig()  # as the server does: each call's config says everything
        tokenizer = load_tokenizer(str(policy), padding_side="left")
        env = {"OMP_NUM_THREADS": str(args.threads), "N3_SERVE_MAX_BATCH": str(max(16, args.clients))}
        if args.batch_wait_ms is not None:
            env["N3_SERVE_BATCH_WAIT_MS"] = str(args.batch_wait_ms)
        with serve(site, **env) as server:
            idle_rss = server.get("/n3/stats", token)["rssBytes"]
            fixed = measure(server, token, model, tokenizer, prompts, args, ignore_eos=True)
            loaded_rss = server.get("/n3/stats", token)["rssBytes"]
            natural = measure(server, token, model, tokenizer, prompts, args, ignore_eos=False)
            before_second = server.get("/n3/stats", token)["rssBytes"]
            server.client(token).completions.create(model="bot:v2", prompt=prompts[0], max_tokens=args.max_tokens)
            second_rss = server.get("/n3/stats", token)["rssBytes"] - before_second

    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    n = len(prompts)
    print_table("serve_bench: manage.py serve_policies against plain transformers generate() on n3-tiny", [
        Figure("plain generate(), median latency", statistics.median(fixed.plain_times) * 1000, "ms"),
        Figure("served, 1 client, median latency", statistics.median(fixed.served_times) * 1000, "ms"),
        Figure("latency, served / plain", fixed.latency_ratio, "x", f"<= {TARGET_LATENCY_RATIO}",
               fixed.latency_ratio <= TARGET_LATENCY_RATIO),
        Figure("plain generate(), sequential", fixed.plain_rate, "req/s"),
        Figure(f"served, {args.clients} concurrent clients", fixed.concurrent_rate, "req/s"),
        Figure("throughput, served / plain", fixed.throughput_ratio, "x", f">= {TARGET_THROUGHPUT_RATIO}",
               fixed.throughput_ratio >= TARGET_THROUGHPUT_RATIO),
        Figure("mean batch size (concurrent)", n / max(1, fixed.batches), "requests"),
        Figure("resident memory of one loaded version", (loaded_rss - idle_rss) / 2**20, "MiB"),
        Figure("a second version besides it", second_rss / 2**20, "MiB"),
        Figure("its weights", parameters / 2**20, "MiB"),
    ], [
        f"{n} requests each, greedy, {args.max_tokens} tokens each (ignore_eos on both sides, as serving benchmarks "
        f"do), torch on {args.threads} thread(s) on each side; clients: the openai package, in this process",
        f"same text as plain generate(): {fixed.same_sequential}/{n} sequential, {fixed.same_batched}/{n} batched",
        f"server process RSS: {idle_rss / 2**20:.0f} MiB idle, {loaded_rss / 2**20:.0f} MiB with the version loaded "
        "(the first version also pays torch's first generate: kernels, allocator pools); ratios: latency "
        f"{fixed.latency_ratio:.3f}x, throughput {fixed.throughput_ratio:.2f}x",
        f"answers ending at EOS as the model chooses ({natural.tokens / n:.1f} tokens on average): plain "
        f"{statistics.median(natural.plain_times) * 1000:.1f} ms, served "
        f"{statistics.median(natural.served_times) * 1000:.1f} ms ({natural.latency_ratio:.2f}x); {args.clients} "
        f"clients {natural.concurrent_rate:.0f} req/s against {natural.plain_rate:.0f} sequential "
        f"({natural.throughput_ratio:.1f}x), mean batch {n / max(1, natural.batches):.1f}",
    ])


if __name__ == "__main__":
    main()
