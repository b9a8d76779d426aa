/* ENGINE_DEBUG is set by setup.py (ENGINE_DEBUG=1 builds); release builds compile `if ENGINE_DEBUG:` away. */
#ifndef ENGINE_DEBUG_H
#define ENGINE_DEBUG_H
#ifndef ENGINE_DEBUG
#define ENGINE_DEBUG 0
#endif
#endif
