"""Re-export of :mod:`radreview.studies.paste` (the app may not import ``training/``)."""

from radreview.studies.paste import (  # noqa: F401
    LidcNodule, TEXTURE_TYPES, lidc_table, load_lidc_nodule, mask_centroid_lps, nodule_type_of, paste_nodule)

__all__ = ["LidcNodule", "TEXTURE_TYPES", "lidc_table", "load_lidc_nodule", "mask_centroid_lps", "nodule_type_of", "paste_nodule"]
