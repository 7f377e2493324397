"""A contact sheet of phantoms from both sites with their labels, for the README.

    python -m chexreason.data.gallery docs/phantom_gallery.png

Shows the first `n` samples of each site for a seed, unfiltered, so the sheet shows the real label mix.
"""

from __future__ import annotations

import argparse
import textwrap

from PIL import Image, ImageDraw, ImageFont

from chexreason.data.phantom import SITES, PhantomSample, generate

_SITE_NAMES = {"a": "site a (CheXpert-like)", "b": "site b (NIH-like)"}


def _caption(sample: PhantomSample) -> str:
    labels = [name + ("?" if value == -1.0 else "") for name, value in sample.labels.items() if value != 0.0]
    return f"{sample.params['view']}: " + ", ".join(labels)


def contact_sheet(n: int = 6, seed: int = 0, size: int = 256) -> Image.Image:
    """One row per site of `n` phantoms, each captioned with its view and labels ("?" = uncertain)."""
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    caption_h, header_h = 48, 24
    sheet = Image.new("L", (n * size, len(SITES) * (header_h + size + caption_h)), 255)
    draw = ImageDraw.Draw(sheet)
    for row, site in enumerate(SITES):
        top = row * (header_h + size + caption_h)
        draw.text((4, top + 3), f"{_SITE_NAMES[site]}, seed {seed}, samples 0-{n - 1}", fill=0, font=font)
        for col, sample in enumerate(generate(site, n, seed=seed, size=size)):
            sheet.paste(sample.image, (col * size, top + header_h))
            lines = textwrap.wrap(_caption(sample), width=size // 7)[:3]
            draw.multiline_text((col * size + 4, top + header_h + size + 2), "\n".join(lines), fill=0, font=small)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="PNG path to write")
    parser.add_argument("--n", type=int, default=6, help="phantoms per site")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    contact_sheet(args.n, args.seed).save(args.out, optimize=True)


if __name__ == "__main__":
    main()
