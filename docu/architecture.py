"""Draw docu/architecture.png, the deployment diagram in docu/deploy.md.

`make diagram` (or `python docu/architecture.py docu/architecture.png`).
Kept as code so the picture changes with the names it shows; matplotlib only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

GATEWAY_COLOUR = "#dbeafe"
MODEL_COLOUR = "#dcfce7"
INFRA_COLOUR = "#f3f4f6"
BUILD_COLOUR = "#fef3c7"


def box(ax, x, y, w, h, title, lines=(), colour=INFRA_COLOUR, dashed=False):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=colour,
            edgecolor="#374151",
            linewidth=1.2,
            linestyle="--" if dashed else "-",
        )
    )
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=10.5, weight="bold")
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.58 - 0.3 * i, line, ha="center", va="top", fontsize=8.5)


def arrow(ax, start, end, label="", offset=(0, 0.14), style="-|>", colour="#111827"):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=14, linewidth=1.4, color=colour
        )
    )
    if label:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, label, ha="center", va="bottom", fontsize=8.5, color=colour)


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(14, 7.4), dpi=110)
    ax.set_xlim(0, 17)
    ax.set_ylim(0, 9.2)
    ax.axis("off")
    ax.text(
        8.5,
        9.0,
        "Kitchenware serving stack (docker-compose, kind, EKS)",
        ha="center",
        va="top",
        fontsize=13,
        weight="bold",
    )

    # Clients.
    box(ax, 0.2, 5.2, 2.4, 1.6, "Client", ["browser page /", "python test.py", "POST /predict"])

    # The cluster (or compose network).
    box(ax, 3.2, 2.0, 13.6, 6.3, "", dashed=True)
    ax.text(
        3.45,
        8.15,
        "namespace kitchenware (Kubernetes)  /  compose network",
        fontsize=9,
        style="italic",
        va="top",
    )

    box(
        ax,
        3.5,
        5.3,
        2.5,
        1.4,
        "Service gateway",
        ["LoadBalancer 80 -> 9696", "kind: NodePort 30080", "compose: proxy port 9696"],
    )
    box(
        ax,
        6.7,
        4.4,
        3.3,
        3.2,
        "gateway pods (x2..6)",
        [
            "nginx :9696 (kubelet :9697)",
            "-> gunicorn 127.0.0.1:8000",
            "Flask, no TensorFlow",
            "/predict  /metrics  /readyz  /healthz",
            "HPA on CPU, PDB minAvailable 1",
            "read-only root, uid 10001",
        ],
        colour=GATEWAY_COLOUR,
    )
    box(
        ax,
        10.6,
        5.7,
        2.5,
        1.3,
        "model-headless",
        ["Service, clusterIP None", "DNS: every ready pod"],
    )
    box(
        ax,
        13.7,
        3.1,
        2.8,
        4.6,
        "model pods (x2..4)",
        [
            "tensorflow/serving",
            "gRPC :8500  REST :8501",
            "/models/kitchenware/<v>",
            "batching (serving/",
            "batching_parameters.txt)",
            "warm-up records",
            "ready only when",
            "model AVAILABLE",
            "HPA on CPU, PDB",
        ],
        colour=MODEL_COLOUR,
    )
    box(ax, 10.6, 3.2, 2.4, 1.1, "Service model", ["ClusterIP 8500/8501", "(debugging)"])

    arrow(ax, (2.6, 6.0), (3.5, 6.0), "HTTP")
    arrow(ax, (6.0, 6.0), (6.7, 6.0))
    arrow(ax, (10.0, 6.35), (10.6, 6.35))
    arrow(ax, (13.1, 6.35), (13.7, 6.35))
    ax.text(11.85, 5.3, "gRPC Predict, round_robin over", ha="center", fontsize=8)
    ax.text(11.85, 5.0, "dns:///model-headless:8500", ha="center", fontsize=8)
    ax.text(11.85, 4.7, "(TF_SERVING_HOST)", ha="center", fontsize=8)
    arrow(ax, (13.0, 3.75), (13.7, 3.75), style="-")

    # Image URLs fetched by the gateway.
    box(
        ax,
        6.9,
        0.15,
        2.9,
        1.2,
        "image URLs (internet)",
        ["public http(s) only", "timeout + size limit"],
        colour="#ffffff",
    )
    arrow(ax, (8.35, 4.4), (8.35, 1.35), " fetch", offset=(0.35, 0))

    # Build path.
    box(
        ax,
        0.2,
        0.15,
        2.6,
        2.9,
        "Build",
        [
            "kitchenware export",
            "-> models/kitchenware/<v>",
            "docker build",
            "image-model.dockerfile",
            "image-gateway.dockerfile",
            "kind load / ECR push",
        ],
        colour=BUILD_COLOUR,
    )
    arrow(ax, (2.8, 1.6), (13.7, 3.3), "", colour="#92400e")
    ax.text(10.2, 2.3, "model image (one per model version)", fontsize=8.5, color="#92400e")
    arrow(ax, (2.8, 2.6), (6.7, 4.6), "", colour="#92400e")
    ax.text(3.4, 3.35, "gateway image (< 250 MB goal)", fontsize=8.5, color="#92400e", rotation=27)

    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    target = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("architecture.png")
    )
    draw(target)
    print(f"wrote {target}")
