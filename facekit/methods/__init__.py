"""Training objectives; importing this package registers each of them in :data:`facekit.methods.base.METHODS`."""

import facekit.methods.camd
import facekit.methods.dino
import facekit.methods.finetune
import facekit.methods.fra
import facekit.methods.lafs
import facekit.methods.mae
import facekit.methods.mcf  # noqa: F401
