// How the shim's C functions report C++ exceptions: every function catches everything and
// returns the message as a string allocated with malloc (free it with hondo_free_error);
// NULL means success. Nothing unwinds into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

namespace hondo {

inline char *error(const char *what) {
  char *s = static_cast<char *>(std::malloc(std::strlen(what) + 1));
  if (s) std::strcpy(s, what);
  return s;
}

}  // namespace hondo

#define GUARD(body)                               \
  try {                                           \
    body;                                         \
    return nullptr;                               \
  } catch (const std::exception &e) {             \
    return hondo::error(e.what());                \
  } catch (...) {                                 \
    return hondo::error("unknown C++ exception"); \
  }
