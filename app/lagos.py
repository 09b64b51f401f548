"""Greater Lagos as the simulator sees it: neighbourhoods, the lagoon bridges, the bbox.

Centres are approximate (to a few hundred metres), good enough for a believable heatmap;
nothing here is a road network. The ``island`` flag matters because the Lagos Lagoon
splits the city: a trip between the mainland and the islands must cross one of the
bridges, which is what makes the Third Mainland Bridge light up in the evening.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Literal

Kind = Literal["business", "mixed", "residential"]

# West African Time, UTC+1 all year (no daylight saving).
LAGOS_TZ = timezone(timedelta(hours=1), "WAT")

# (west, south, east, north): everything the simulator produces stays inside.
LAGOS_BBOX: tuple[float, float, float, float] = (2.7, 6.3, 4.4, 6.8)


@dataclass(frozen=True)
class Neighbourhood:
    name: str
    lat: float
    lon: float
    radius_km: float  # how far from the centre pick-ups and drop-offs spread
    weight: float  # relative popularity as a trip end
    kind: Kind  # business districts pull morning trips, residential ones evening trips
    island: bool  # south of the lagoon (reached from the mainland only over a bridge)


@dataclass(frozen=True)
class Bridge:
    name: str
    mainland: tuple[float, float]  # (lat, lon) of the mainland approach
    island: tuple[float, float]  # (lat, lon) of the island landing


NEIGHBOURHOODS: tuple[Neighbourhood, ...] = (
    # mainland, north
    Neighbourhood("Ikeja", 6.6018, 3.3515, 1.5, 1.6, "business", False),
    Neighbourhood("Maryland", 6.5710, 3.3670, 0.8, 1.0, "mixed", False),
    Neighbourhood("Ojota", 6.5870, 3.3790, 0.8, 0.7, "mixed", False),
    Neighbourhood("Ketu", 6.5990, 3.3920, 0.9, 0.8, "residential", False),
    Neighbourhood("Magodo", 6.6190, 3.3850, 1.0, 0.6, "residential", False),
    Neighbourhood("Ogba", 6.6290, 3.3430, 1.0, 0.8, "residential", False),
    Neighbourhood("Agege", 6.6180, 3.3209, 1.2, 0.9, "residential", False),
    Neighbourhood("Egbeda", 6.5919, 3.2906, 1.2, 0.9, "residential", False),
    Neighbourhood("Ikotun", 6.5500, 3.2640, 1.2, 0.8, "residential", False),
    Neighbourhood("Ikorodu", 6.6194, 3.5105, 2.0, 1.0, "residential", False),
    # mainland, centre
    Neighbourhood("Oshodi", 6.5550, 3.3436, 1.0, 1.2, "mixed", False),
    Neighbourhood("Isolo", 6.5300, 3.3200, 1.0, 0.8, "residential", False),
    Neighbourhood("Mushin", 6.5273, 3.3414, 1.0, 0.9, "residential", False),
    Neighbourhood("Gbagada", 6.5537, 3.3906, 1.0, 1.0, "residential", False),
    Neighbourhood("Yaba", 6.5095, 3.3711, 1.0, 1.3, "mixed", False),
    Neighbourhood("Surulere", 6.5000, 3.3500, 1.3, 1.2, "residential", False),
    Neighbourhood("Ebute Metta", 6.4850, 3.3800, 0.8, 0.6, "mixed", False),
    # mainland, south-west
    Neighbourhood("Apapa", 6.4489, 3.3594, 1.2, 1.0, "business", False),
    Neighbourhood("Festac Town", 6.4667, 3.2833, 1.2, 1.0, "residential", False),
    Neighbourhood("Ojo", 6.4600, 3.1800, 1.5, 0.5, "residential", False),
    # the islands
    Neighbourhood("Lagos Island / Marina", 6.4541, 3.3947, 0.9, 1.4, "business", True),
    Neighbourhood("Obalende", 6.4480, 3.4080, 0.6, 0.9, "mixed", True),
    Neighbourhood("Ikoyi", 6.4549, 3.4366, 1.2, 1.2, "mixed", True),
    Neighbourhood("Victoria Island", 6.4281, 3.4219, 1.0, 1.7, "business", True),
    Neighbourhood("Lekki Phase 1", 6.4478, 3.4723, 1.2, 1.3, "mixed", True),
    Neighbourhood("Osapa / Chevron", 6.4400, 3.5250, 1.2, 0.9, "residential", True),
    Neighbourhood("Ajah", 6.4698, 3.5852, 1.3, 1.1, "residential", True),
    Neighbourhood("Sangotedo", 6.4700, 3.6300, 1.5, 0.6, "residential", True),
)

BRIDGES: tuple[Bridge, ...] = (
    Bridge("Third Mainland Bridge", mainland=(6.5460, 3.3990), island=(6.4680, 3.3980)),
    Bridge("Eko Bridge", mainland=(6.4620, 3.3700), island=(6.4540, 3.3880)),
    Bridge("Carter Bridge", mainland=(6.4660, 3.3850), island=(6.4590, 3.3930)),
)
