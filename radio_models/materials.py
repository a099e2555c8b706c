"""Per-material losses for the COST 231 multi-wall model, dB per crossing.

COST 231 (Damosso, "Digital mobile radio towards future generation systems", 1999,
ch. 4) fitted, at about 1.8 GHz, light walls 3.4 dB, heavy walls 6.9 dB and floors
18.3 dB. Practitioner values at 2.4 GHz (docs/references.md section 1, uncertain by about
+-50 %): drywall 3, glass 2, wood 4, brick 10, concrete 15, metal 25 dB. Racks full of
goods are 10-30 dB as an obstruction (no standard value); 15 dB is the default.
"""

from __future__ import annotations

COST231_LIGHT_WALL_DB = 3.4
COST231_HEAVY_WALL_DB = 6.9
COST231_FLOOR_DB = 18.3
COST231_FLOOR_B = 0.46
DEFAULT_RACK_LOSS_DB = 15.0

DEFAULT_MATERIAL_LOSS_DB: dict[str, float] = {
    "drywall": 3.0,
    "glass": 2.0,
    "wood": 4.0,
    "brick": 10.0,
    "concrete": 15.0,
    "metal": 25.0,
    "cost231-light": COST231_LIGHT_WALL_DB,
    "cost231-heavy": COST231_HEAVY_WALL_DB,
}
