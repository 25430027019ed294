"""One module per paper's model family, and the registry that names them."""

from tasks import emodal, mitseas, song, wang

TASKS = {module.NAME: module for module in (emodal, song, mitseas, wang)}
