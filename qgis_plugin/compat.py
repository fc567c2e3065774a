"""Names that differ between QGIS 3 (Qt5, PyQt5) and QGIS 4 (Qt6, PyQt6), resolved once here.

Everything else in the plugin uses scoped enum names (``Qt.MouseButton.RightButton``), which PyQt5 5.11+
and PyQt6 both accept, and ``exec()`` (PyQt6 dropped the underscored Qt5 spelling).
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QMetaType, QVariant

try:
    from qgis.PyQt.QtGui import QAction  # Qt6: QAction lives in QtGui
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5

__all__ = ["QAction", "field_type"]

# QgsField types: QVariant.Type under PyQt5 (QGIS 3.22 accepts only these), QMetaType.Type under PyQt6
_QT6_NAMES = {"String": "QString"}


def field_type(name: str):
    """The QgsField type called ``name`` (``"Double"``, ``"Int"``, ``"String"``) in this Qt's terms."""
    if hasattr(QVariant, name):
        return getattr(QVariant, name)
    return getattr(QMetaType.Type, _QT6_NAMES.get(name, name))
