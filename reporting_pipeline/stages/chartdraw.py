"""Charts drawn onto the PDF canvas straight from ReportLab's shapes, without its general renderer.

ReportLab's `renderPDF` walks a drawing's shape tree generically: every node is wrapped in its own
save/restore of the graphics state, its properties are diffed against a state stack, user nodes are
expanded with bookkeeping for features our charts never use. A report's three line charts (about 80
nodes each) took 10 of its 34 ms of rendering; drawn here, 6.5-7, most of it ReportLab building the
shapes (the plot, its axis labels). `paint` draws the same shapes with the same canvas calls and the
same effective graphics state (colours, widths, caps, joins, dashes, fonts, transforms), setting each
only when it changes: the same page, pixel for pixel (the seed's 200 reports, rasterized by poppler).

It knows the shapes a LinePlot makes (groups, lines, polylines, circles, strings). Anything else (another
shape, opacity, overprint, a draw-time callback) makes it decline before drawing anything, and the caller
uses renderPDF.
"""

from __future__ import annotations

from reportlab.graphics.shapes import STATE_DEFAULTS, Circle, DerivedValue, Group, Line, PolyLine, String, UserNode
from reportlab.pdfbase.pdfmetrics import stringWidth

IDENTITY = (1, 0, 0, 1, 0, 0)
_STROKE_KEYS = ("strokeColor", "strokeWidth", "strokeLineCap", "strokeLineJoin", "strokeDashArray")
_TEXT_KEYS = ("fillColor", "font")
# State renderPDF applies that our charts leave at its defaults; a chart that sets one is not ours to draw.
_DEFAULT_ONLY = {"strokeOpacity": None, "fillOpacity": None, "fillOverprint": False, "strokeOverprint": False,
                 "overprintMask": 0, "fillMode": STATE_DEFAULTS["fillMode"]}


class Unsupported(Exception):
    """The drawing has something `paint` does not draw exactly as renderPDF would."""


def _expanded(node, canvas):
    """A user node (a chart widget, a marker) as the shapes it stands for, as renderPDF expands it."""
    while isinstance(node, UserNode):
        had_canvas = hasattr(node, "_canvas")
        if not had_canvas:
            node._canvas = canvas
        try:
            expanded = node.provideNode()
        finally:
            if not had_canvas:
                del node._canvas
        node = expanded
    return node


def _plan(node, state: dict, flags: dict, canvas, ops: list) -> None:
    """Append the drawing operations of `node` to `ops`: (kind, shape, effective state) or ("push", transform)
    and ("pop",). `state` is what the node inherits; `flags` renderPDF's stroke/fill switches."""
    node = _expanded(node, canvas)
    if node is None:
        return
    if getattr(node, "_drawTimeCallback", None) is not None:
        raise Unsupported("draw-time callback")
    own = {}
    for key, value in node.__dict__.items():
        if isinstance(value, DerivedValue):
            raise Unsupported("derived value")
        if key in STATE_DEFAULTS:
            own[key] = value
    if own:
        state = dict(state)
        for key, value in own.items():
            if key in _DEFAULT_ONLY:
                if value != _DEFAULT_ONLY[key]:
                    raise Unsupported(key)
            elif key in ("strokeColor", "fillColor"):
                # renderPDF: None only switches stroking (filling) off, keeping the colour; and the switch is
                # not restored with the graphics state, it stays as the last node in drawing order set it.
                flags[key] = value is not None
                if value is not None:
                    state[key] = value
            elif key != "strokeMiterLimit":  # renderPDF never applies it
                state[key] = value
    if isinstance(node, Group):
        transform = tuple(own.get("transform", IDENTITY))
        if transform != IDENTITY:
            ops.append(("push", transform))
        for child in node.getContents():
            _plan(child, state, flags, canvas, ops)
        if transform != IDENTITY:
            ops.append(("pop",))
    elif isinstance(node, (Line, PolyLine)):
        if isinstance(node, PolyLine) and len(node.points) < 2:
            raise Unsupported("a polyline without a point")  # renderPDF's assertion, not ours to answer
        if flags["strokeColor"]:
            ops.append((type(node).__name__, node, state))
    elif isinstance(node, Circle):
        ops.append(("Circle", node, state, flags["fillColor"], flags["strokeColor"]))
    elif isinstance(node, String):
        if getattr(node, "textRenderMode", 0):
            raise Unsupported("text render mode")
        if state["textAnchor"] not in ("start", "inherited", "end", "middle"):
            raise Unsupported(f"text anchor {state['textAnchor']}")
        if flags["fillColor"]:
            ops.append(("String", node, state))
    else:
        raise Unsupported(type(node).__name__)


class _Pen:
    """Sets the canvas's graphics state, only what differs from what it last set."""

    def __init__(self, canvas):
        self.canvas, self.current, self.saved = canvas, {}, []

    def use(self, state: dict, keys) -> None:
        c, current = self.canvas, self.current
        for key in keys:
            value = (state["fontName"], state["fontSize"]) if key == "font" else state[key]
            if key in current and current[key] == value:
                continue
            current[key] = value
            if key == "strokeColor":
                c.setStrokeColor(value)
            elif key == "fillColor":
                c.setFillColor(value)
            elif key == "strokeWidth":
                c.setLineWidth(value)
            elif key == "strokeLineCap":
                c.setLineCap(value)
            elif key == "strokeLineJoin":
                c.setLineJoin(value)
            elif key == "strokeDashArray":
                if not value:
                    c.setDash()
                elif isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], (list, tuple)):
                    c.setDash(value[1], value[0])  # (phase, pattern), as renderPDF reads it
                else:
                    c.setDash(value, 0)
            elif key == "font":
                c.setFont(*value)

    def push(self, transform) -> None:
        self.canvas.saveState()
        self.saved.append(dict(self.current))
        self.canvas.transform(*transform)

    def pop(self) -> None:
        self.canvas.restoreState()
        self.current = self.saved.pop()


def paint(drawing, canvas) -> None:
    """Draw `drawing` at the canvas's origin, as renderPDF.draw(drawing, canvas, 0, 0) would; Unsupported
    (before anything is drawn) for a drawing it does not know."""
    state = STATE_DEFAULTS.copy()
    for key, attribute in (("fontName", "initialFontName"), ("fontSize", "initialFontSize")):
        initial = getattr(drawing, attribute, None)  # a drawing may set them, as renderPDF reads them
        if initial is not None:
            state[key] = initial
    flags = {"strokeColor": state["strokeColor"] is not None, "fillColor": state["fillColor"] is not None}
    ops: list = []
    _plan(drawing, state, flags, canvas, ops)

    canvas.saveState()
    pen = _Pen(canvas)
    try:
        for op in ops:
            kind = op[0]
            if kind == "push":
                pen.push(op[1])
            elif kind == "pop":
                pen.pop()
            elif kind == "Line":
                _, line, s = op
                pen.use(s, _STROKE_KEYS)
                canvas.line(line.x1, line.y1, line.x2, line.y2)
            elif kind == "PolyLine":
                _, polyline, s = op
                points = polyline.points
                pen.use(s, _STROKE_KEYS)
                path = canvas.beginPath()
                path.moveTo(points[0], points[1])
                for i in range(2, len(points), 2):
                    path.lineTo(points[i], points[i + 1])
                canvas.drawPath(path)
            elif kind == "Circle":
                _, circle, s, fill, stroke = op
                pen.use(s, (*(_STROKE_KEYS if stroke else ()), *(("fillColor",) if fill else ())))
                canvas.circle(circle.cx, circle.cy, circle.r, fill=fill, stroke=stroke)
            else:  # String
                _, string, s = op
                pen.use(s, _TEXT_KEYS)
                x, anchor = string.x, s["textAnchor"]
                if anchor not in ("start", "inherited"):
                    width = stringWidth(string.text, s["fontName"], s["fontSize"], string.encoding)
                    x -= width if anchor == "end" else width * 0.5
                canvas.drawString(x, string.y, string.text)
    finally:
        canvas.restoreState()
