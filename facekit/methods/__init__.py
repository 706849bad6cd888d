"""Training objectives; importing this package registers each of them in :data:`facekit.methods.base.METHODS`."""

import facekit.methods.camd
import facekit.methods.mae
import facekit.methods.mcf  # noqa: F401
