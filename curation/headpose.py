"""Head pose (yaw, pitch, roll in degrees) from 68 iBUG landmarks: ``cv2.solvePnP`` of ten points against a
generic 3D face, and the Euler decomposition both face backends share.

Convention (the same as the lite backend's MediaPipe pose): the rotation takes the face model to the camera in
an OpenGL-style camera frame (x right, y UP, z towards the viewer) and is decomposed as
R = Rz(roll) Ry(yaw) Rx(pitch); 0/0/0 is a face looking straight into the camera. As seen in the image:
positive yaw turns the nose towards the image's right (the subject turns to their own left), positive pitch
tilts the nose down, positive roll turns the face counter-clockwise. The angles are relative to the camera's
axis, not to the line of sight: a face off-centre that looks at the lens has a yaw/pitch of a few degrees.

Camera: a pinhole with focal length = the image's longer side, the principal point at the image centre and
no distortion.

3D model: the published anthropometric face model of the University of Coimbra (ISR, "glAnthropometric3DModel",
in centimetres; its 14-point iBUG subset is the one lincolnhard/head-pose-estimation uses), x negated so that
x points to the image's right (the model is symmetric: this is the same face), y up, z out of the face. Points:
nose tip, chin, the four eye corners, the nostrils and the mouth corners. Brows and the lower lip are left out
(they move with expression and speech). bench/headpose_agreement.py measured this set against MediaPipe's pose
on the shared clips; the popular six-point model (nose tip, chin, outer eye corners, mouth corners, in
arbitrary units) agreed about half as well in yaw, its mouth corners and chin carrying too much weight."""

from __future__ import annotations

import cv2
import numpy as np

# iBUG-68 index -> position. 36 is the outer corner of the eye on the image's left (the subject's right eye),
# 48 the mouth corner on the image's left.
MODEL_POINTS: dict[int, tuple[float, float, float]] = {
    30: (0.0, 0.0, 6.763430),  # nose tip (pronasale)
    8: (0.0, -7.415691, 4.070434),  # chin (menton)
    36: (-5.311432, 5.485328, 3.987654),  # outer eye corner, image left
    39: (-1.789930, 5.393625, 4.413414),  # inner eye corner, image left
    42: (1.789930, 5.393625, 4.413414),  # inner eye corner, image right
    45: (5.311432, 5.485328, 3.987654),  # outer eye corner, image right
    31: (-2.005628, 1.409845, 6.165652),  # nostril, image left
    35: (2.005628, 1.409845, 6.165652),  # nostril, image right
    48: (-2.774015, -2.080775, 5.048531),  # mouth corner, image left
    54: (2.774015, -2.080775, 5.048531),  # mouth corner, image right
}
POSE_INDICES = tuple(MODEL_POINTS)
_MODEL = np.array([MODEL_POINTS[i] for i in POSE_INDICES], dtype=np.float64)
_EYE_SPAN = MODEL_POINTS[45][0] - MODEL_POINTS[36][0]
# OpenCV's camera frame (y down, z forward) -> the OpenGL-style frame the angles are defined in.
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a 3x3 rotation (columns normalised first: the matrix may scale)."""
    r = rotation / np.linalg.norm(rotation, axis=0, keepdims=True)
    yaw = np.degrees(np.arctan2(-r[2, 0], np.hypot(r[2, 1], r[2, 2])))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def camera_matrix(width: float, height: float) -> np.ndarray:
    focal = float(max(width, height))
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def head_pose(landmarks: np.ndarray, image_size: tuple[float, float], scores: np.ndarray | None = None,
              score_min: float = 0.0) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees from (68, 2) iBUG landmarks in pixels of an image of ``image_size`` =
    (width, height); None when a needed point is missing (non-finite, or its score below ``score_min``) or no
    pose puts the face in front of the camera."""
    points = np.asarray(landmarks, dtype=np.float64)[list(POSE_INDICES)]
    if not np.all(np.isfinite(points)):
        return None
    if scores is not None and np.any(np.asarray(scores)[list(POSE_INDICES)] < score_min):
        return None
    camera = camera_matrix(*image_size)
    focal, centre = camera[0, 0], camera[:2, 2]
    eye_span = np.linalg.norm(points[POSE_INDICES.index(45)] - points[POSE_INDICES.index(36)])
    if eye_span < 1e-6:
        return None
    # Start from a frontal face at the distance its eye span implies: the iterative solver then settles on the
    # nearby solution instead of a mirrored one facing away from the camera.
    distance = focal * _EYE_SPAN / eye_span
    nose = points[POSE_INDICES.index(30)]
    rvec = np.array([[np.pi], [0.0], [0.0]])  # the model's y up / z out -> OpenCV's y down / z forward
    tvec = np.append((nose - centre) * distance / focal, distance + MODEL_POINTS[30][2]).reshape(3, 1)
    ok, rvec, tvec = cv2.solvePnP(_MODEL, points, camera, None, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        return None
    rotation_cv, _ = cv2.Rodrigues(rvec)
    return euler_from_rotation(_CV_TO_GL @ rotation_cv)
